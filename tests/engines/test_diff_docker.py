"""Docker's aufs driver tests for the read side, ported: TestGetDiff, TestChanges (both
levels), TestDiffSize, TestChildDiffSize — on every engine that runs here."""

from __future__ import annotations

import io
import os
import tarfile

import aufs
from aufs.archive import ChangeKind


def test_get_diff(driver: aufs.Driver) -> None:
    driver.create("1")
    diff_path = driver.get("1")
    try:
        with open(os.path.join(diff_path, "test_file"), "wb") as f:
            f.truncate(1024)
        with driver.diff("1") as stream:
            data = stream.read()
    finally:
        driver.put("1")
    assert data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["test_file"]
        assert members[0].size == 1024
        content = tar.extractfile(members[0])
        assert content is not None and content.read() == bytes(1024)


def _write(path: str, data: str = "testline") -> None:
    with open(path, "w") as f:
        f.write(data)


def test_changes_both_levels(driver: aufs.Driver) -> None:
    driver.create("1")
    driver.create("2", "1")
    mnt = driver.get("2")
    try:
        _write(os.path.join(mnt, "test.txt"))
        changes = driver.changes("2")
    finally:
        driver.put("2")
    assert len(changes) == 1, changes
    assert changes[0].path == "/test.txt" and changes[0].kind is ChangeKind.ADD

    driver.create("3", "2")
    mnt = driver.get("3")
    try:
        _write(os.path.join(mnt, "test2.txt"))
        changes = driver.changes("3")
    finally:
        driver.put("3")
    assert len(changes) == 1, changes
    assert changes[0].path == "/test2.txt" and changes[0].kind is ChangeKind.ADD


def test_diff_size(driver: aufs.Driver) -> None:
    driver.create("1")
    diff_path = driver.get("1")
    try:
        with open(os.path.join(diff_path, "test_file"), "wb") as f:
            f.truncate(1024)
            size = os.fstat(f.fileno()).st_size
    finally:
        driver.put("1")
    assert driver.diff_size("1") == size == 1024


def test_child_diff_size(driver: aufs.Driver) -> None:
    driver.create("1")
    diff_path = driver.get("1")
    try:
        with open(os.path.join(diff_path, "test_file"), "wb") as f:
            f.truncate(1024)
    finally:
        driver.put("1")
    assert driver.diff_size("1") == 1024
    driver.create("2", "1")
    assert driver.diff_size("2") == 0
