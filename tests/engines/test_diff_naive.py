"""Diff, changes and size against a parent that is not the direct one (the naive path):
both trees mounted, compared, the changes exported; every mount released after."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

import aufs
from aufs.archive import Change, ChangeKind
from aufs.graphdriver import LayerNotFoundError, NaiveDiffDriver


def write(root: str, rel: str, data: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data)


@pytest.fixture
def chain(driver: aufs.Driver) -> aufs.Driver:
    """1: a b c dir/x;  2 (on 1): a changed, b deleted, d and dir/y added;
    3 (on 2): e added, c and dir/x deleted."""
    driver.create("1")
    root = driver.get("1")
    for rel in ("a", "b", "c", "dir/x"):
        write(root, rel, rel)
    os.utime(os.path.join(root, "a"), (1_500_000_000, 1_500_000_000))
    driver.put("1")
    driver.create("2", "1")
    root = driver.get("2")
    write(root, "a", "a, changed")
    os.unlink(os.path.join(root, "b"))
    write(root, "d", "dddd")
    write(root, "dir/y", "yyyyy")
    driver.put("2")
    driver.create("3", "2")
    root = driver.get("3")
    write(root, "e", "eeeeee")
    os.unlink(os.path.join(root, "c"))
    os.unlink(os.path.join(root, "dir", "x"))
    driver.put("3")
    return driver


EXPECTED = [Change("/a", ChangeKind.MODIFY), Change("/b", ChangeKind.DELETE),
            Change("/c", ChangeKind.DELETE), Change("/d", ChangeKind.ADD),
            Change("/dir", ChangeKind.MODIFY), Change("/dir/x", ChangeKind.DELETE),
            Change("/dir/y", ChangeKind.ADD), Change("/e", ChangeKind.ADD)]


def released(d: aufs.Driver, *ids: str) -> bool:
    return all(not d.mounted(i) and d.refcount(i) == 0 for i in ids)


def test_changes_against_grandparent(chain: aufs.Driver) -> None:
    assert chain.changes("3", "1") == EXPECTED
    assert released(chain, "1", "2", "3")


def test_diff_against_grandparent(chain: aufs.Driver) -> None:
    stream = chain.diff("3", "1")
    assert chain.mounted("3")  # held while the stream is open
    with stream:
        data = stream.read()
    assert released(chain, "1", "2", "3")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        m = {x.name: x for x in tar.getmembers()}
        assert list(m) == ["a", ".wh.b", ".wh.c", "d", "dir", "dir/.wh.x", "dir/y", "e"]
        a = tar.extractfile("a")
        assert a is not None and a.read() == b"a, changed"
    assert all(m[n].isreg() and m[n].size == 0 for n in (".wh.b", ".wh.c", "dir/.wh.x"))
    assert m["dir"].isdir()


def test_diff_size_against_grandparent(chain: aufs.Driver) -> None:
    assert chain.diff_size("3", "1") == len("a, changed") + 4 + 5 + 6
    assert chain.diff_size("3") == 6
    assert released(chain, "1", "2", "3")


def test_closing_the_stream_early_releases_the_mount(chain: aufs.Driver) -> None:
    stream = chain.diff("3", "1")
    assert stream.read(100)
    stream.close()
    assert released(chain, "3")


def test_unknown_parent_mounts_nothing(chain: aufs.Driver) -> None:
    with pytest.raises(LayerNotFoundError):
        chain.diff("3", "nope")
    with pytest.raises(LayerNotFoundError):
        chain.changes("3", "nope")
    assert released(chain, "3")


def test_naive_diff_driver_over_the_driver(chain: aufs.Driver) -> None:
    naive = NaiveDiffDriver(chain)
    assert naive.changes("3", "1") == EXPECTED
    whole = naive.changes("3")
    assert {c.kind for c in whole} == {ChangeKind.ADD}
    assert [c.path for c in whole] == ["/a", "/d", "/dir", "/dir/y", "/e"]
    with naive.diff("3") as stream, tarfile.open(fileobj=io.BytesIO(stream.read())) as tar:
        assert tar.getnames() == ["a", "d", "dir", "dir/y", "e"]
    assert naive.diff_size("3") == len("a, changed") + 4 + 5 + 6
    assert naive.diff_size("3", "2") == 6
    assert released(chain, "1", "2", "3")
