"""Docker's pkg/archive breakout tables (v20.10.24 archive_test.go TestUntarInvalidFilenames,
TestUntarInvalidHardlink, TestUntarInvalidSymlink, TestUntarHardlinkToSymlink; diff_test.go
TestApplyLayerInvalid*), run through apply_diff on every engine, with utils_test.go's
testBreakout checks made stricter.

Docker's ``../victim`` is the layer's sibling. Here a victim stands at every place a
relative name could reach: beside the layer (``diff/victim``), beside the staging
directory apply extracts into (``.aufs/staging/victim``) and beside the store. After each
case every victim is byte for byte as before, no file of the layer is (a link to or a
copy of) a victim's file, and — if apply_diff failed — the layer is exactly as before.

Symlinks follow Docker's createTarFile: a target that, joined to the link's directory,
leaves the layer is a breakout (so every symlink case of TestUntarInvalidSymlink is one);
an absolute target is joined the same way and stays inside.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import aufs
from aufs.archive import BreakoutError
from tests.safety.snapshot import snapshot

REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@dataclass(frozen=True)
class H:
    """A tar header of Docker's tables (no data)."""

    name: str
    type: bytes
    linkname: str = ""
    mode: int = 0o644


OK, BREAKOUT = "ok", "breakout"

# (case, headers, expected outcome)
CASES: list[tuple[str, list[H], str]] = [
    # TestUntarInvalidFilenames / TestApplyLayerInvalidFilenames
    ("filenames-dotdot", [H("../victim/dotdot", REG)], BREAKOUT),
    ("filenames-slash-dotdot", [H("/../victim/slash-dotdot", REG)], BREAKOUT),
    # TestUntarInvalidHardlink / TestApplyLayerInvalidHardlink
    ("hardlink-dotdot", [H("dotdot", LNK, "../victim/hello")], BREAKOUT),
    ("hardlink-slash-dotdot", [H("slash-dotdot", LNK, "/../victim/hello")], BREAKOUT),
    ("hardlink-write-victim", [H("loophole-victim", LNK, "../victim", 0o755),
                               H("loophole-victim/file", REG)], BREAKOUT),
    ("hardlink-then-symlink", [H("loophole-victim", LNK, "../victim", 0o755),
                               H("symlink", SYM, "loophole-victim/hello")], BREAKOUT),
    ("hardlink-then-hardlink", [H("loophole-victim", LNK, "../victim", 0o755),
                                H("hardlink", LNK, "loophole-victim/hello")], BREAKOUT),
    ("hardlink-remove-victim", [H("loophole-victim", LNK, "../victim", 0o755),
                                H("loophole-victim", REG)], BREAKOUT),
    # TestUntarInvalidSymlink / TestApplyLayerInvalidSymlink
    ("symlink-dotdot", [H("dotdot", SYM, "../victim/hello")], BREAKOUT),
    ("symlink-slash-dotdot", [H("slash-dotdot", SYM, "/../victim/hello")], BREAKOUT),
    ("symlink-write-victim", [H("loophole-victim", SYM, "../victim", 0o755),
                              H("loophole-victim/file", REG)], BREAKOUT),
    ("symlink-then-symlink", [H("loophole-victim", SYM, "../victim", 0o755),
                              H("symlink", SYM, "loophole-victim/hello")], BREAKOUT),
    ("symlink-then-hardlink", [H("loophole-victim", SYM, "../victim", 0o755),
                               H("hardlink", LNK, "loophole-victim/hello")], BREAKOUT),
    ("symlink-remove-victim", [H("loophole-victim", SYM, "../victim", 0o755),
                               H("loophole-victim", REG)], BREAKOUT),
    ("symlink-in-path", [H("dir/loophole", SYM, "../../victim", 0o755),
                         H("dir/loophole/newdir/newfile", REG)], BREAKOUT),
    # TestUntarHardlinkToSymlink
    ("hardlink-to-symlink", [H("symlink1", SYM, "regfile"), H("symlink2", LNK, "symlink1"),
                             H("regfile", REG)], OK),
]


def make_tar(headers: list[H]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for h in headers:
            info = tarfile.TarInfo(h.name)
            info.type, info.linkname, info.mode = h.type, h.linkname, h.mode
            tf.addfile(info)
    return buf.getvalue()


class Victims:
    """A ``victim`` directory with a ``hello`` file of unique content at each place."""

    def __init__(self, places: list[Path]) -> None:
        self.hello = f"hello {time.time_ns()}".encode()
        self.dirs = [p / "victim" for p in places]
        for d in self.dirs:
            d.mkdir()
            (d / "hello").write_bytes(self.hello)
        self.before = {d: snapshot(str(d)) for d in self.dirs}
        self.inodes = {(s.st_dev, s.st_ino) for s in (os.stat(d / "hello") for d in self.dirs)}

    def check(self, layer: str) -> None:
        for d in self.dirs:
            assert snapshot(str(d)) == self.before[d], f"{d} changed"
        for dirpath, _, files in os.walk(layer):
            for name in files:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                assert (st.st_dev, st.st_ino) not in self.inodes, f"{path} links a victim"
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        assert f.read() != self.hello, f"{path} copies a victim"


@pytest.mark.parametrize(("case", "headers", "expected"), CASES, ids=[c[0] for c in CASES])
def test_docker_breakout_table(driver: aufs.Driver, tmp_path: Path, case: str,
                               headers: list[H], expected: str) -> None:
    driver.create("L")
    layer = driver.layout.diff("L")
    Path(layer, "keep").write_text("keep")
    victims = Victims([tmp_path, Path(driver.layout.diff_dir), Path(driver.layout.staging_dir)])
    before = snapshot(layer)
    data = make_tar(headers)
    if expected == BREAKOUT:
        with pytest.raises(BreakoutError):
            driver.apply_diff("L", "", io.BytesIO(data))
        assert snapshot(layer) == before
    else:
        driver.apply_diff("L", "", io.BytesIO(data))
    victims.check(layer)
    assert os.listdir(driver.layout.staging_dir) == ["victim"]
    if case == "hardlink-to-symlink":
        a, b = os.lstat(f"{layer}/symlink1"), os.lstat(f"{layer}/symlink2")
        assert os.path.islink(f"{layer}/symlink2") and a.st_ino == b.st_ino
