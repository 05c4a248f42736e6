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

import pytest

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


def _kernel_whiteouts(layer: Path, names: list[str], opaque_dir: str) -> Path:
    """What kernel AUFS writes for a deletion through the union: ``.wh.<name>``, a hard
    link of the branch's ``.wh..wh.aufs`` (mode 0444, root's), and an opaque directory's
    ``.wh..wh..opq`` another link of it."""
    base = layer / ".wh..wh.aufs"
    base.write_bytes(b"")
    base.chmod(0o444)
    os.utime(base, (1_000_000, 1_000_000))
    for name in names:
        os.link(base, layer / f".wh.{name}")
    (layer / opaque_dir).mkdir()
    os.link(base, layer / opaque_dir / ".wh..wh..opq")
    return base


def _members(data: bytes) -> list[tuple[str, bytes, int, int, int, str]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        return [(m.name, m.type, m.mode, m.size, int(m.mtime), m.linkname) for m in tar]


def test_kernel_whiteouts_export_as_files_and_round_trip(driver: aufs.Driver) -> None:
    """A kernel whiteout is a hard link of .wh..wh.aufs: it still exports as an empty
    regular ``.wh.<name>`` (no hard-link entry to a name the tar leaves out), counts 0,
    is a deletion; applied to another layer and exported again, the same bytes."""
    d = driver
    d.create("base")
    b = Path(d.layout.diff("base"))
    for name in ("gone", "also"):
        (b / name).write_text(name)
    (b / "d").mkdir()
    (b / "d" / "old").write_text("o")
    d.create("top", "base")
    top = Path(d.layout.diff("top"))
    _kernel_whiteouts(top, ["gone", "also"], "d")
    (top / "d" / "new").write_text("n")
    with d.diff("top") as stream:
        data = stream.read()
    got = _members(data)
    assert [(n, t, oct(mo), s, lk) for n, t, mo, s, _, lk in got] == [
        (".wh.also", tarfile.REGTYPE, "0o444", 0, ""),
        (".wh.gone", tarfile.REGTYPE, "0o444", 0, ""),
        ("d", tarfile.DIRTYPE, "0o755", 0, ""),
        ("d/.wh..wh..opq", tarfile.REGTYPE, "0o444", 0, ""),
        ("d/new", tarfile.REGTYPE, "0o644", 1, ""),
    ]
    assert all(mt == 1_000_000 for n, _, _, _, mt, _ in got if ".wh." in n)
    assert [str(c) for c in d.changes("top")] == ["D /also", "C /d", "A /d/new", "D /d/old",
                                                 "D /gone"]
    assert d.diff_size("top") == 1
    d.create("copy", "base")
    assert d.apply_diff("copy", "base", io.BytesIO(data)) == 1
    with d.diff("copy") as stream:
        again = stream.read()
    if d.whiteouts.name == "aufs":  # overlay's opaque mark is an xattr: no marker mode
        assert _members(again) == got
        assert again == data


def _tar(members: list[tuple[str, int]], truncated: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, mtime in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid = mtime, 0o600, 4321, 4321
            tar.addfile(info, io.BytesIO(b""))
    data = buf.getvalue()
    if truncated:  # the members, then one whose data is cut short
        data = data[:512 * len(members)]
        big = tarfile.TarInfo("big")
        big.size = 100_000
        data += big.tobuf(format=tarfile.GNU_FORMAT) + b"z" * 2048
    return data


def _meta(layer: Path) -> dict[str, tuple[int, int, int, int]]:
    return {n: (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_nlink)
            for n in sorted(os.listdir(layer)) for st in [os.lstat(layer / n)]}


def test_applying_a_whiteout_over_a_kernel_one_writes_no_other(driver: aufs.Driver) -> None:
    """A whiteout entry whose marker is there already (in the staging clone, a hard link
    of the live layer's; from kernel AUFS, also of .wh..wh.aufs and every other
    whiteout) replaces it: a failed apply leaves the layer exactly as it was, and a good
    one gives the entry's owner and times to that whiteout alone."""
    d = driver
    d.create("base")
    d.create("top", "base")
    top = Path(d.layout.diff("top"))
    _kernel_whiteouts(top, ["gone", "other"], "d")
    before = _meta(top)
    with pytest.raises(aufs.archive.ArchiveError):
        d.apply_diff("top", "base", io.BytesIO(_tar([(".wh.gone", 5000)], truncated=True)))
    assert _meta(top) == before
    if d.whiteouts.name != "aufs":
        return  # an overlay store never holds AUFS markers (made by hand here)
    d.apply_diff("top", "base", io.BytesIO(_tar([(".wh.gone", 5000)])))
    after = _meta(top)
    assert after.pop(".wh.gone")[1:] == (4321, 5000 * 10**9, 1)
    assert after == {n: (*v[:3], v[3] - 1 if n in (".wh..wh.aufs", ".wh.other") else v[3])
                     for n, v in before.items() if n != ".wh.gone"}
