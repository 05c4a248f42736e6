"""Pre-0.7 Docker graph migration (the seed's ``Migrate``), on every runnable engine."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs.migrate import relocate

CHAIN = ("img-a", "img-b", "img-c")  # img-c's parent is img-b, whose parent is img-a


def make_graph(base: Path, graph_dir: Path | None = None) -> None:
    graph = graph_dir or base / "graph"
    graph.mkdir(parents=True, exist_ok=True)
    if graph_dir is not None:
        base.mkdir(parents=True, exist_ok=True)
        (base / "graph").symlink_to(graph_dir)
    parent = ""
    for image in CHAIN:
        (graph / image / "layer").mkdir(parents=True)
        (graph / image / "layer" / f"from-{image}").write_text(image)
        meta = {"id": image, **({"parent": parent} if parent else {})}
        (graph / image / "json").write_text(json.dumps(meta))
        parent = image
    rw = base / "containers" / "ctr1" / "rw"
    rw.mkdir(parents=True)
    (rw / "written-by-container").write_text("hello")
    (base / "containers" / "ctr1" / "config.json").write_text(json.dumps({"Image": "img-c"}))
    (base / "repositories").write_text("{}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own: renames from it into the store fail with EXDEV."""
    mnt = tmp_path / "otherfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_no_graph_is_a_noop(driver: aufs.Driver, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    driver.migrate(tmp_path / "old", lambda p: None)
    assert driver.ids() == []


def test_migrate_images_and_container(driver: aufs.Driver, tmp_path: Path) -> None:
    old = tmp_path / "old"
    make_graph(old)
    prepared: list[str] = []

    def setup_init(path: str) -> None:
        prepared.append(path)
        Path(path, ".dockerinit").write_text("init")

    driver.migrate(old, setup_init)

    assert driver.parents("img-c") == ["img-b", "img-a"]
    assert driver.parents("img-a") == []
    assert driver.parents("ctr1-init") == ["img-c", "img-b", "img-a"]
    assert driver.parents("ctr1") == ["ctr1-init", "img-c", "img-b", "img-a"]
    assert (Path(driver.root) / "layers" / "ctr1").read_text() == "ctr1-init\nimg-c\nimg-b\nimg-a\n"
    assert len(prepared) == 1
    assert not driver.mounted("ctr1-init")
    assert not (old / "repositories").exists()
    assert (old / "repositories-aufs").read_text() == "{}"
    for image in CHAIN:  # renamed, not copied
        assert not (old / "graph" / image / "layer").exists()
        assert not os.path.islink(driver.layout.diff(image))

    root = driver.get("ctr1")
    try:
        names = sorted(os.listdir(root))
        assert names == [".dockerinit", "from-img-a", "from-img-b", "from-img-c",
                         "written-by-container"]
    finally:
        driver.put("ctr1")

    # A second run changes nothing.
    driver.migrate(old, setup_init)
    assert len(prepared) == 1


def test_migrate_falls_back_to_symlinks(driver: aufs.Driver, tmp_path: Path,
                                        tmpfs: Path) -> None:
    old = tmp_path / "old"
    make_graph(old, graph_dir=tmpfs / "graph")
    try:
        driver.migrate(old, lambda p: None)
        for image in CHAIN:
            diff = driver.layout.diff(image)
            assert os.path.islink(diff)
            assert os.readlink(diff) == str(old / "graph" / image / "layer")
        root = driver.get("ctr1")
        try:
            assert (Path(root) / "from-img-a").read_text() == "img-a"
        finally:
            driver.put("ctr1")
    finally:
        driver.cleanup()


def test_relocate_replaces_symlink_of_failed_run(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "f").write_text("x")
    new = tmp_path / "new"
    new.symlink_to(old)  # what a run whose rename failed left
    relocate(str(old), str(new))
    assert not new.is_symlink()
    assert (new / "f").read_text() == "x"
    assert not old.exists()
