"""AUFS housekeeping in a rw branch is never content, whatever the engine.

Kernel AUFS makes ``.wh..wh.aufs``, ``.wh..wh.orph/`` and ``.wh..wh.plnk/`` in every
writable branch it mounts (Docker's own layers have them). Here they are made by hand —
a pseudo-link hard-linked to a file of the layer among them — under every engine, and
changes, diff and diff_size, by the direct and the naive path, must not see them.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import aufs
from tests.housekeeping import HOUSEKEEPING, content_names, make_housekeeping


def _names(stream: io.BufferedIOBase | object) -> list[str]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        return sorted(m.name.rstrip("/") for m in tar)


def test_housekeeping_is_never_content(driver: aufs.Driver) -> None:
    d = driver
    d.create("grand")
    Path(d.layout.diff("grand"), "g").write_text("g")
    d.create("base", "grand")
    Path(d.layout.diff("base"), "b").write_text("b")
    d.create("top", "base")
    top = Path(d.layout.diff("top"))
    (top / "f").write_bytes(b"12345")
    for layer in ("base", "top"):
        make_housekeeping(Path(d.layout.diff(layer)), linked="f" if layer == "top" else "b")
    (top / "sub").mkdir()
    make_housekeeping(top / "sub")  # not where AUFS puts it: housekeeping all the same

    direct = [str(c) for c in d.changes("top")]
    assert direct == ["A /f", "A /sub"]
    assert [str(c) for c in d.changes("top", "base")] == direct
    assert [str(c) for c in d.changes("top", "grand")] == ["A /b", "A /f", "A /sub"]
    assert d.diff_size("top") == 5  # the pseudo-link is the same inode: counted once
    assert d.diff_size("top", "grand") == 5 + 1
    with d.diff("top") as stream:
        assert _names(stream) == ["f", "sub"]
    with d.diff("top", "grand") as stream:
        assert _names(stream) == ["b", "f", "sub"]
    # A layer made from that diff holds no housekeeping either.
    d.create("copy", "base")
    with d.diff("top") as stream:
        d.apply_diff("copy", "base", io.BytesIO(stream.read()))
    assert sorted(os.listdir(d.layout.diff("copy"))) == ["f", "sub"]
    assert content_names(os.listdir(top)) == ["f", "sub"]
    assert set(os.listdir(top)) - {"f", "sub"} == set(HOUSEKEEPING)
