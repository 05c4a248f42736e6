"""The reference count file: a count, and the mark of a get that is mounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from aufs.store import refs


@pytest.mark.parametrize(("raw", "count", "mounting"), [
    (b"", 0, False),
    (b"0\n", 0, False),
    (b"3\n", 3, False),
    (b"0 m\n", 0, True),       # a get died mounting
    (b"2 m\n", 2, True),
    (b"2 x\n", 2, False),      # an unknown word is no mark
    (b"junk\n", 0, False),     # damaged: zero, reconciled with the mount table
    (b"-4\n", 0, False),
    (b"  \n", 0, False),
])
def test_parse(tmp_path: Path, raw: bytes, count: int, mounting: bool) -> None:
    path = tmp_path / "r"
    path.write_bytes(raw)
    assert refs.read(str(path)) == count
    assert refs.mounting(str(path)) is mounting
    with refs.Count(str(path)) as c:
        assert (c.value, c.mounting) == (count, mounting)


def test_the_mark_is_written_and_cleared_by_the_next_count(tmp_path: Path) -> None:
    path = str(tmp_path / "r")
    with refs.Count(path) as c:
        c.mark_mounting()
    assert refs.mounting(path) and refs.read(path) == 0
    with refs.Count(path) as c:
        c.set(1)
    assert not refs.mounting(path) and refs.read(path) == 1
    assert Path(path).read_bytes() == b"1  \n"  # padded over the mark: no ftruncate
    assert not refs.mounting(str(tmp_path / "missing"))
