"""apply_diff is all or nothing: truncated or corrupt input (a stream, a file, compressed),
an interrupt, a full filesystem, a file size limit, a kill -9 — the layer stays exactly as
it was and no staging is left (after ``init``, for the kill)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

import aufs
from aufs._sys import libc
from aufs._sys import mount as sysmount
from aufs.archive import ArchiveError
from tests.safety.snapshot import snapshot

Snap = dict[str, tuple[Any, ...]]
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda b: b,
    "gzip": lambda b: gzip.compress(b, compresslevel=1, mtime=0),
    "bzip2": lambda b: bz2.compress(b, 1),
    "xz": lambda b: lzma.compress(b, preset=0),
    "zstd": lambda b: zstandard.ZstdCompressor(level=1, write_checksum=True).compress(b),
}


def layer_tar(files: int = 40, big: int = 600_000) -> bytes:
    """Dirs, small files, one big file (left in a tar file and copied by the kernel), a
    hard link, a symlink, a whiteout and an opaque dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_600_000_000
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

        add("d", kind=tarfile.DIRTYPE)
        for i in range(files):
            add(f"d/f{i:03}", bytes([i % 256]) * (1000 + 37 * (i % 100)))
        add("d/big", os.urandom(big))
        add("d/link", kind=tarfile.LNKTYPE, link="d/f001")
        add("d/sym", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add(".wh.old")
        add("opq", kind=tarfile.DIRTYPE)
        add("opq/.wh..wh..opq", b"")
        add("opq/new", b"new")
        add("zz-last", b"last")
    return buf.getvalue()


@pytest.fixture
def layer(driver: aufs.Driver) -> Iterator[tuple[aufs.Driver, str, Snap]]:
    driver.create("L")
    diff = driver.layout.diff("L")
    os.makedirs(f"{diff}/opq/inner")
    for rel in ("old", "d-file", "opq/inner/x"):
        Path(diff, rel).write_text(rel)
    os.symlink("/somewhere", f"{diff}/sym")
    yield driver, diff, snapshot(diff)


def _unchanged(driver: aufs.Driver, diff: str, before: Snap) -> None:
    assert snapshot(diff) == before
    assert os.listdir(driver.layout.staging_dir) == []


def test_a_good_apply_changes_the_layer(layer: tuple[aufs.Driver, str, Snap]
                                        ) -> None:
    """The control: the tar of the other tests does change the layer."""
    driver, diff, before = layer
    driver.apply_diff("L", "", io.BytesIO(layer_tar()))
    assert snapshot(diff) != before
    assert os.path.isfile(f"{diff}/zz-last") and not os.path.exists(f"{diff}/opq/inner")


@pytest.mark.parametrize("kind", sorted(COMPRESS))
@pytest.mark.parametrize("source", ["stream", "file"])
def test_truncated_input(layer: tuple[aufs.Driver, str, Snap], tmp_path: Path,
                         kind: str, source: str) -> None:
    driver, diff, before = layer
    plain = layer_tar()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        last = tf.getmembers()[-1]
    members_end = last.offset_data + -(-last.size // 512) * 512
    data = COMPRESS[kind](plain)
    cuts = {10, 100, 511, 512, 1000, len(data) // 3, len(data) // 2, len(data) * 9 // 10,
            len(data) - 1}
    if kind == "none":
        cuts |= {members_end, members_end - 3}
    for cut in sorted(cuts):
        if kind == "none" and cut >= members_end + 512:
            continue  # past the first end block: a whole archive (as Go reads it)
        cut_data = data[:cut]
        with pytest.raises(ArchiveError):
            if source == "stream":
                driver.apply_diff("L", "", io.BytesIO(cut_data))
            else:
                path = tmp_path / "cut.tar"
                path.write_bytes(cut_data)
                with open(path, "rb") as f:
                    driver.apply_diff("L", "", f)
        _unchanged(driver, diff, before)


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_corrupt_input(layer: tuple[aufs.Driver, str, Snap], kind: str) -> None:
    driver, diff, before = layer
    plain = layer_tar()
    data = bytearray(COMPRESS[kind](plain))
    middle = len(data) * 2 // 3
    if kind == "none":  # file data has no checksum; a header has
        with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
            middle = next(m.offset for m in tf.getmembers() if m.name == "zz-last") + 20
    data[middle:middle + 64] = bytes(b ^ 0x55 for b in data[middle:middle + 64])
    with pytest.raises(ArchiveError):
        driver.apply_diff("L", "", io.BytesIO(bytes(data)))
    _unchanged(driver, diff, before)


class _Interrupting(io.RawIOBase):
    """A stream that raises KeyboardInterrupt once ``after`` bytes were read."""

    def __init__(self, data: bytes, after: int) -> None:
        self._data = io.BytesIO(data)
        self._after = after

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._data.tell() >= self._after:
            raise KeyboardInterrupt
        chunk = self._data.read(min(len(b), 4096, self._after - self._data.tell()))
        b[:len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("kind", ["none", "gzip"])
def test_interrupt(layer: tuple[aufs.Driver, str, Snap], kind: str) -> None:
    driver, diff, before = layer
    data = COMPRESS[kind](layer_tar())
    with pytest.raises(KeyboardInterrupt):
        driver.apply_diff("L", "", io.BufferedReader(_Interrupting(data, len(data) // 2)))
    _unchanged(driver, diff, before)


_FSIZE_CHILD = """
import io, resource, signal, sys, aufs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
d = aufs.init(sys.argv[1], ["aufs.engine=" + sys.argv[2]])
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    with open(sys.argv[3], "rb") as f:
        d.apply_diff("L", "", f)
except OSError as exc:
    print("OSError", exc.errno)
"""


def test_file_size_limit(layer: tuple[aufs.Driver, str, Snap], engine: str,
                         tmp_path: Path) -> None:
    """EFBIG (the machine's limit, not the archive's fault) stays an OSError."""
    driver, diff, before = layer
    path = tmp_path / "layer.tar"
    path.write_bytes(layer_tar())
    out = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, driver.layout.root, engine,
                          str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": _src()})
    assert out.stdout.strip() == "OSError 27", out.stderr
    _unchanged(driver, diff, before)


def _src() -> str:
    return os.path.dirname(os.path.dirname(aufs.__file__))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    target = tmp_path / "small"
    target.mkdir()
    libc.mount("tmpfs", str(target), "tmpfs", 0, "size=3m")
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            libc.umount2(str(target), sysmount.MNT_DETACH)


def test_full_filesystem(small_fs: Path) -> None:
    from tests.conftest import require_engine

    require_engine("overlay")
    d = aufs.init(small_fs / "store", ["aufs.engine=overlay"])
    try:
        d.create("L")
        diff = d.layout.diff("L")
        Path(diff, "old").write_text("old")
        before = snapshot(diff)
        with pytest.raises(OSError) as err:
            d.apply_diff("L", "", io.BytesIO(layer_tar(files=200, big=2_500_000)))
        assert err.value.errno == 28  # ENOSPC
        _unchanged(d, diff, before)
        d.apply_diff("L", "", io.BytesIO(layer_tar(files=3, big=10)))  # space came back
    finally:
        d.cleanup()


_KILL_CHILD = """
import sys, aufs
d = aufs.init(sys.argv[1], ["aufs.engine=" + sys.argv[2]])
with open(sys.argv[3], "rb") as f:
    d.apply_diff("L", "", f)
print("finished")
"""


def test_kill_9_mid_apply_of_a_file(layer: tuple[aufs.Driver, str, Snap],
                                    engine: str, tmp_path: Path) -> None:
    driver, diff, before = layer
    path = tmp_path / "big.tar"
    path.write_bytes(layer_tar(files=3000, big=30_000_000))
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, driver.layout.root, engine,
                              str(path)], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": _src()})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            staged = os.listdir(driver.layout.staging_dir)
            if staged and os.path.isdir(driver.layout.staging(staged[0]) + "/d") and len(
                    os.listdir(driver.layout.staging(staged[0]) + "/d")) > 200:
                break
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
    assert b"finished" not in out, "the apply finished before the kill: make it bigger"
    assert snapshot(diff) == before
    d2 = aufs.init(driver.layout.root, [f"aufs.engine={engine}"])
    try:
        assert snapshot(d2.layout.diff("L")) == before
        assert os.listdir(d2.layout.staging_dir) == []
    finally:
        d2.cleanup()
