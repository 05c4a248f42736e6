"""Docker's shared graph-driver tests (``graphdriver/graphtest``, v1.7.1): CreateEmpty,
CreateBase, CreateSnap — ported, on every runnable engine."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from tests.housekeeping import listdir


@pytest.fixture
def umask0() -> Iterator[None]:
    """createBase runs with umask 0: "we need to be able to set any perms"."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def verify_file(path: Path, mode: int, uid: int, gid: int) -> None:
    st = os.stat(path)
    assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(mode), path
    assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(mode), (path, oct(st.st_mode))
    assert (st.st_uid, st.st_gid) == (uid, gid), path


def create_base(d: aufs.Driver, name: str) -> None:
    d.create(name)
    root = Path(d.get(name))
    try:
        subdir = root / "a subdir"
        os.mkdir(subdir, 0o705 | stat.S_ISVTX)
        os.chown(subdir, 1, 2)
        fd = os.open(root / "a file", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o222 | stat.S_ISUID)
        try:
            os.write(fd, b"Some data")
        finally:
            os.close(fd)
    finally:
        d.put(name)


def verify_base(d: aufs.Driver, name: str) -> None:
    root = Path(d.get(name))
    try:
        verify_file(root / "a subdir", stat.S_IFDIR | 0o705 | stat.S_ISVTX, 1, 2)
        verify_file(root / "a file", stat.S_IFREG | 0o222 | stat.S_ISUID, 0, 0)
        assert (root / "a file").read_bytes() == b"Some data"
        assert sorted(os.listdir(root)) == ["a file", "a subdir"]
    finally:
        d.put(name)


def test_create_empty(driver: aufs.Driver) -> None:
    old = os.umask(0o077)  # the layer's root is 0755 whatever the caller's umask
    try:
        driver.create("empty")
    finally:
        os.umask(old)
    assert driver.exists("empty")
    root = Path(driver.get("empty"))
    verify_file(root, stat.S_IFDIR | 0o755, 0, 0)
    assert os.listdir(root) == []
    driver.put("empty")
    driver.remove("empty")
    assert not driver.exists("empty")


@pytest.mark.usefixtures("umask0")
def test_create_base(driver: aufs.Driver) -> None:
    create_base(driver, "Base")
    verify_base(driver, "Base")
    driver.remove("Base")


@pytest.mark.usefixtures("umask0")
def test_create_snap(driver: aufs.Driver, store_root: Path) -> None:
    create_base(driver, "Base")
    driver.create("Snap", "Base")
    verify_base(driver, "Snap")  # the same files, seen through the union
    assert not driver.mounted("Snap")
    assert listdir(store_root / "diff" / "Snap") == []  # reading copied nothing up
    driver.remove("Snap")
    driver.remove("Base")
    assert driver.ids() == []
