"""Docker's graphtest cases for the read side (daemon/graphdriver/graphtest, v20.10):
DriverTestChanges, the diff half of DriverTestDiffApply, DeepLayerRead-style chains —
plus whiteouts and opaque directories made by the real engine."""

from __future__ import annotations

import io
import os
import random
import shutil
import tarfile
from typing import IO

import pytest

import aufs
from aufs.archive import Change, ChangeKind


def random_content(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def add_many_files(d: aufs.Driver, layer: str, count: int, seed: int) -> None:
    root = d.get(layer)
    try:
        for i in range(0, count, 100):
            directory = os.path.join(root, f"directory-{i}")
            os.makedirs(directory, 0o755, exist_ok=True)
            for j in range(min(100, count - i)):
                with open(os.path.join(directory, f"file-{i + j}"), "wb") as f:
                    f.write(random_content(64, seed + i + j))
    finally:
        d.put(layer)


def change_many_files(d: aufs.Driver, layer: str, count: int, seed: int) -> list[Change]:
    root = d.get(layer)
    changes: list[Change] = []
    try:
        for i in range(0, count, 100):
            archive_root = f"/directory-{i}"
            os.makedirs(root + archive_root, 0o755, exist_ok=True)
            for j in range(min(100, count - i)):
                if j == 0:
                    changes.append(Change(archive_root, ChangeKind.MODIFY))
                if j % 3 == 0:
                    path = f"{archive_root}/file-{i + j}"
                    with open(root + path, "wb") as f:
                        f.write(random_content(64, seed + i + j))
                    changes.append(Change(path, ChangeKind.MODIFY))
                elif j % 3 == 1:
                    path = f"{archive_root}/file-{seed}-{i + j}"
                    with open(root + path, "wb") as f:
                        f.write(random_content(64, seed + i + j))
                    changes.append(Change(path, ChangeKind.ADD))
                else:
                    path = f"{archive_root}/file-{i + j}"
                    os.unlink(root + path)
                    changes.append(Change(path, ChangeKind.DELETE))
    finally:
        d.put(layer)
    return changes


def members(stream: IO[bytes]) -> dict[str, tarfile.TarInfo]:
    data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_driver_changes(driver: aufs.Driver) -> None:
    driver.create("base")
    add_many_files(driver, "base", 20, 3)
    driver.create("upper", "base")
    expected = change_many_files(driver, "upper", 20, 6)
    changes = driver.changes("upper", "base")
    assert changes == sorted(expected)
    assert driver.changes("upper") == changes
    driver.get("upper")  # mounted or not, the same answer
    try:
        assert driver.changes("upper") == changes
    finally:
        driver.put("upper")


def test_diff_of_upper_layer(driver: aufs.Driver) -> None:
    """The diff half of DriverTestDiffApply: what upper's tar holds."""
    driver.create("base")
    add_many_files(driver, "base", 250, 3)
    root = driver.get("base")
    try:
        with open(os.path.join(root, "file-remove.txt"), "w") as f:
            f.write("This file should get removed in upper!")
        os.makedirs(os.path.join(root, "var", "lib"))
    finally:
        driver.put("base")
    driver.create("upper", "base")
    add_many_files(driver, "upper", 250, 6)
    root = driver.get("upper")
    try:
        os.unlink(os.path.join(root, "file-remove.txt"))
        shutil.rmtree(os.path.join(root, "var", "lib"))
    finally:
        driver.put("upper")
    with driver.diff("upper", "base") as stream:
        m = members(stream)
    assert m[".wh.file-remove.txt"].isreg() and m[".wh.file-remove.txt"].size == 0
    assert m["var/.wh.lib"].isreg()
    files = [n for n in m if n.startswith("directory-") and "/file-" in n]
    assert len(files) == 250
    with driver.diff("upper") as stream:
        data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("directory-200/file-242")
        assert member is not None and member.read() == random_content(64, 6 + 242)
    assert driver.diff_size("upper") == 250 * 64


def add_layer_files(d: aufs.Driver, layer: str, parent: str, i: int) -> None:
    root = d.get(layer)
    try:
        with open(os.path.join(root, "top-id"), "w") as f:
            f.write(layer)
        layer_dir = os.path.join(root, f"layer-{i}")
        os.makedirs(layer_dir, 0o755)
        for name, value in (("layer-id", layer), ("parent-id", parent)):
            with open(os.path.join(layer_dir, name), "w") as f:
                f.write(value)
    finally:
        d.put(layer)


def test_deep_layer_chain(driver: aufs.Driver) -> None:
    count = 12
    driver.create("base")
    root = driver.get("base")
    with open(os.path.join(root, "testfile.txt"), "w") as f:
        f.write("test content")
    driver.put("base")
    last = "base"
    for i in range(1, count + 1):
        layer = f"layer{i}"
        driver.create(layer, last)
        add_layer_files(driver, layer, last, i)
        last = layer
    # each layer's own changes, whatever its depth
    for i in (1, count):
        kind = ChangeKind.ADD if i == 1 else ChangeKind.MODIFY
        assert driver.changes(f"layer{i}") == [
            Change(f"/layer-{i}", ChangeKind.ADD), Change(f"/layer-{i}/layer-id", ChangeKind.ADD),
            Change(f"/layer-{i}/parent-id", ChangeKind.ADD), Change("/top-id", kind)]
    # the top against the base: every layer's files at once (the naive path)
    changes = driver.changes(last, "base")
    assert len(changes) == 3 * count + 1
    assert all(c.kind is ChangeKind.ADD for c in changes)
    with driver.diff(last, "base") as stream:
        m = members(stream)
    assert sorted(m) == sorted(c.path[1:] for c in changes)
    assert not driver.mounted(last)
    root = driver.get(last)
    try:
        with open(os.path.join(root, "testfile.txt")) as f:
            assert f.read() == "test content"
        with open(os.path.join(root, f"layer-{count}", "parent-id")) as f:
            assert f.read() == f"layer{count - 1}"
    finally:
        driver.put(last)


def test_engine_whiteouts_and_opaque_dirs_in_the_tar(driver: aufs.Driver) -> None:
    driver.create("1")
    root = driver.get("1")
    os.makedirs(os.path.join(root, "dir", "sub"))
    for rel in ("dir/sub/f", "dir/g", "file", "keep"):
        with open(os.path.join(root, rel), "w") as f:
            f.write(rel)
    driver.put("1")
    driver.create("2", "1")
    mnt = driver.get("2")
    try:
        os.unlink(os.path.join(mnt, "file"))
        shutil.rmtree(os.path.join(mnt, "dir"))
        os.makedirs(os.path.join(mnt, "dir"))  # recreated: opaque
        with open(os.path.join(mnt, "dir", "new"), "w") as f:
            f.write("new")
        mounted_changes = driver.changes("2")
        with driver.diff("2") as stream:
            mounted_members = members(stream)
    finally:
        driver.put("2")
    expected = [Change("/dir", ChangeKind.MODIFY), Change("/dir/g", ChangeKind.DELETE),
                Change("/dir/new", ChangeKind.ADD), Change("/dir/sub", ChangeKind.DELETE),
                Change("/file", ChangeKind.DELETE)]
    assert mounted_changes == expected
    assert driver.changes("2") == expected  # unmounted (fuse-overlayfs rewrites whiteouts)
    with driver.diff("2") as stream:
        m = members(stream)
    assert list(m) == [".wh.file", "dir", "dir/.wh..wh..opq", "dir/new"]
    assert list(mounted_members) == list(m)
    assert all(m[n].isreg() and m[n].size == 0 for n in (".wh.file", "dir/.wh..wh..opq"))


@pytest.mark.parametrize("parent_arg", ["", "direct"])
def test_diff_with_direct_parent_is_the_layer_diff(driver: aufs.Driver, parent_arg: str) -> None:
    driver.create("1")
    driver.create("2", "1")
    root = driver.get("2")
    try:
        with open(os.path.join(root, "f"), "w") as f:
            f.write("f")
    finally:
        driver.put("2")
    with driver.diff("2", "1" if parent_arg else "") as stream:
        assert list(members(stream)) == ["f"]
    assert not driver.mounted("2")
