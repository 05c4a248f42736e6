"""A read-only store root: ``aufs.init`` refuses it in one clear line naming the root."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs.graphdriver import DriverError
from tests.conftest import require_engine
from tests.reliability import invariants, loopfs

pytestmark = pytest.mark.root


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def assert_refused(root: Path) -> None:
    with pytest.raises(DriverError) as info:
        aufs.init(root, ["aufs.engine=overlay"])
    message = str(info.value)
    assert "\n" not in message, message
    assert str(root.resolve()) in message or str(root) in message, message
    assert "read-only" in message.lower(), message
    assert invariants.mounts_under(str(root)) in ([], [str(root.resolve())]), (
        "a refused init mounted something")


def make_store(root: Path) -> None:
    d = aufs.init(root, ["aufs.engine=overlay"])
    try:
        d.create("base")
        d.create("top", "base")
        d.get("top")
        d.put("top")
    finally:
        d.cleanup()


@pytest.fixture
def loop_ro(tmp_path: Path) -> Iterator[Path]:
    reason = loopfs.skip_reason()
    if reason:
        pytest.skip(reason)
    require_engine("overlay")
    with loopfs.loop_fs(tmp_path, 16) as fs:
        make_store(fs / "store")
        _mount("-o", "remount,ro", str(fs))
        yield fs


def test_existing_store_on_a_read_only_filesystem(loop_ro: Path) -> None:
    assert_refused(loop_ro / "store")


def test_new_store_below_a_read_only_filesystem(loop_ro: Path) -> None:
    assert_refused(loop_ro / "new" / "store")


def test_store_behind_a_read_only_bind_mount(tmp_path: Path) -> None:
    require_engine("overlay")
    store = tmp_path / "store"
    make_store(store)
    _mount("--bind", str(store), str(store))
    try:
        _mount("-o", "remount,bind,ro", str(store))
        assert_refused(store)
    finally:
        subprocess.run(["umount", str(store)], check=True, capture_output=True)
    # Writable again: the store opens and still has its layers.
    d = aufs.init(store, ["aufs.engine=overlay"])
    try:
        assert d.ids() == ["base", "top"]
    finally:
        d.cleanup()


def test_cli_says_read_only_in_one_line(loop_ro: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aufs", "--root", str(loop_ro / "store"), "status"],
        capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0].lower(), proc.stderr
