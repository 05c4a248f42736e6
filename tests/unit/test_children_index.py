"""remove() finds a layer's children without reading every layers/<id>
(aufs.store.children), and stays right for layers it did not index and after crashes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs.driver import Driver
from aufs.errors import LayerInUseError
from aufs.store import children, layers


@pytest.fixture
def d(tmp_path: Path) -> Iterator[Driver]:
    drv = aufs.init(tmp_path / "store")
    try:
        yield drv
    finally:
        drv.cleanup()


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = layers.read_chain

    def counting(path: str) -> list[str]:
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(layers, "read_chain", counting)
    return seen


def test_remove_reads_a_few_files_whatever_the_store_size(
        d: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(300):
        d.create(f"base{i}")
    d.create("top", "base7")
    d.remove("base0")  # the first remove may build the index
    reads = _reads(monkeypatch)
    with pytest.raises(LayerInUseError, match="top"):
        d.remove("base7")
    d.remove("top")
    d.remove("base7")
    d.remove("base8")
    assert len(reads) <= 8, reads
    assert not d.exists("base7") and d.exists("base9")


def test_a_child_written_by_another_program_is_seen(d: Driver) -> None:
    """A Docker-written layer (layers/<id> made without us) leaves the index stale:
    the next remove reads every layer and refuses."""
    d.create("base")
    d.create("other")
    d.remove("other")  # index built and fresh
    assert children.fresh(d.layout)
    os.mkdir(d.layout.diff("docker-child"))
    os.mkdir(d.layout.mnt("docker-child"))
    Path(d.layout.layers("docker-child")).write_text("base\n")
    assert not children.fresh(d.layout)
    with pytest.raises(LayerInUseError, match="docker-child"):
        d.remove("base")


def test_an_entry_of_a_create_that_died_before_publishing_is_ignored(d: Driver) -> None:
    d.create("base")
    d.create("x")
    d.remove("x")
    children.added(d.layout, "base", "never-published")  # the crash: entry, no layer
    d.remove("base")
    assert not d.exists("base")


def test_a_remove_killed_after_its_rename_leaves_the_index_stale(d: Driver) -> None:
    d.create("base")
    d.create("child", "base")
    d.create("y")
    d.remove("y")
    assert children.fresh(d.layout)
    # as if remove("child") died after renaming layers/child: no new stamp
    os.replace(d.layout.layers("child"), d.layout.layers("child") + "-removing")
    assert not children.fresh(d.layout)
    d.remove("base")  # rebuilt: child is gone, base may go
    assert not d.exists("base")
