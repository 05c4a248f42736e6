"""Docker v1.7.1 ``daemon/graphdriver/aufs/aufs_test.go``, ported, on every runnable engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import aufs
from aufs._sys.fsinfo import fs_magic, fs_name
from aufs.graphdriver import LayerNotFoundError


def new_driver(root: Path, engine: str) -> aufs.Driver:
    return aufs.init(root, [f"aufs.engine={engine}"])


def test_new_driver(store_root: Path, engine: str) -> None:
    d = new_driver(store_root, engine)
    try:
        assert d is not None
        assert isinstance(d, aufs.Driver)
    finally:
        d.cleanup()


def test_aufs_string(driver: aufs.Driver) -> None:
    assert str(driver) == "aufs"


def test_create_dir_structure(driver: aufs.Driver, store_root: Path) -> None:
    for p in ("mnt", "layers", "diff"):
        assert (store_root / p).is_dir()


def test_new_driver_from_existing_dir(store_root: Path, engine: str) -> None:
    first = new_driver(store_root, engine)
    first.create("1")
    second = new_driver(store_root, engine)
    try:
        assert second.exists("1")
        assert (store_root / "layers" / "1").read_bytes() == b""
    finally:
        second.cleanup()
        first.cleanup()


def test_create_new_dir(driver: aufs.Driver) -> None:
    driver.create("1", "")


def test_create_new_dir_structure(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("1", "")
    for p in ("mnt", "diff", "layers"):
        assert (store_root / p / "1").exists()


def test_remove_image(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("1", "")
    driver.remove("1")
    for p in ("mnt", "diff", "layers"):
        assert not (store_root / p / "1").exists()
        assert not (store_root / p / "1-removing").exists()


def test_get_without_parent(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("1", "")
    assert driver.get("1", "") == str(store_root / "diff" / "1")
    driver.put("1")


def test_cleanup_with_no_dirs(driver: aufs.Driver) -> None:
    driver.cleanup()


def test_cleanup_with_dir(driver: aufs.Driver) -> None:
    driver.create("1", "")
    driver.cleanup()


def test_mounted_false_response(driver: aufs.Driver) -> None:
    driver.create("1", "")
    assert driver.mounted("1") is False


def test_mounted_true_response(driver: aufs.Driver) -> None:
    driver.create("1", "")
    driver.create("2", "1")
    driver.get("2", "")
    assert driver.mounted("2") is True


def test_mount_with_parent(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("1", "")
    driver.create("2", "1")
    mnt = driver.get("2", "")
    assert mnt == str(store_root / "mnt" / "2")
    driver.cleanup()
    assert driver.mounted("2") is False


def test_remove_mounted_dir(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("1", "")
    driver.create("2", "1")
    assert driver.get("2", "")
    assert driver.mounted("2")
    driver.remove("2")
    assert not driver.exists("2")
    assert not (store_root / "mnt" / "2").exists()


def test_create_with_invalid_parent(driver: aufs.Driver, store_root: Path) -> None:
    with pytest.raises(LayerNotFoundError):
        driver.create("1", "docker")
    for p in ("mnt", "diff", "layers"):
        assert not (store_root / p / "1").exists()


def test_exists(driver: aufs.Driver) -> None:
    driver.create("1", "")
    assert not driver.exists("none")
    assert driver.exists("1")


def test_status(driver: aufs.Driver, store_root: Path, engine: str) -> None:
    driver.create("1", "")
    status = driver.status()
    assert status[0] == ("Root Dir", driver.root_path())
    assert status[0][1] == os.path.realpath(store_root)
    assert status[1] == ("Backing Filesystem", fs_name(fs_magic(str(store_root))))
    assert status[2] == ("Dirs", "1")
    # dirperm1 is an AUFS mount option; the other engines never use it.
    assert status[3] == ("Dirperm1 Supported", status[3][1] if engine == "aufs" else "false")
    assert status[3][1] in ("true", "false")
    rows = dict(status)
    assert rows["Engine"] == engine
    assert rows["Whiteout Format"] == ("overlay" if engine == "overlay" else "aufs")


def _hash(c: str) -> str:
    return hashlib.sha256(c.encode()).hexdigest()


def mount_more_than_42_layers(mount_path: Path, engine: str) -> None:
    mount_path.mkdir(parents=True, exist_ok=True)
    d = new_driver(mount_path, engine)
    try:
        last = ""
        expected = 0
        for i in range(1, 127):
            expected += 1
            parent = "" if i == 1 else _hash(str(i - 1))
            current = _hash(str(i))
            d.create(current, parent)
            point = d.get(current, "")
            Path(point, current).touch()
            if i % 10 == 0:
                os.remove(os.path.join(point, parent))
                expected -= 1
            last = current
        point = d.get(last, "")
        assert len(os.listdir(point)) == expected
    finally:
        d.cleanup()


def test_mount_more_than_42_layers(tmp_path: Path, engine: str) -> None:
    mount_more_than_42_layers(tmp_path / "aufs-tests" / "aufs", engine)


def test_mount_more_than_42_layers_matching_path_length(tmp_path: Path, engine: str) -> None:
    outer = tmp_path / "aufs-tests"
    zeroes = "0"
    while True:
        # The 4096-byte boundary of the AUFS option string falls inside a path or a
        # permission section for this root length.
        mount_path = outer / zeroes / "aufs"
        path_length = 77 + len(str(mount_path))
        mod = 4095 % path_length
        if mod == 0 or mod > path_length - 2:
            mount_more_than_42_layers(mount_path, engine)
            return
        zeroes += "0"

