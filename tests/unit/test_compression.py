"""Compression detection (a pure table) and streaming decompression of layer tars."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from aufs.archive import ArchiveError
from aufs.archive.compression import Compression, detect, open_decompressed

DETECT_TABLE = [
    (b"", Compression.NONE),
    (b"\x1f\x8b\x08\x00\x00", Compression.GZIP),
    (b"\x1f\x8b", Compression.NONE),  # too short to be sure: Docker needs the 3 bytes
    (b"BZh91AY", Compression.BZIP2),
    (b"\xfd7zXZ\x00\x00", Compression.XZ),
    (b"\xfd7zXZ", Compression.NONE),
    (b"\x28\xb5\x2f\xfd\x04", Compression.ZSTD),
    (b"ustar\x00", Compression.NONE),
    (b"file.txt\x00\x00\x00", Compression.NONE),
]


@pytest.mark.parametrize(("head", "expected"), DETECT_TABLE)
def test_detect(head: bytes, expected: Compression) -> None:
    assert detect(head) is expected


COMPRESSORS: dict[Compression, Callable[[bytes], bytes]] = {
    Compression.NONE: lambda b: b,
    Compression.GZIP: gzip.compress,
    Compression.BZIP2: bz2.compress,
    Compression.XZ: lzma.compress,
    Compression.ZSTD: lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),
}

DATA = random.Random(7).randbytes(300_000) + bytes(3_000_000) + b"end"


class _Trickle(io.RawIOBase):
    """Returns at most 1000 bytes per read, as a pipe may."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        chunk = self._buf.read(min(len(b), 1000))
        b[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("kind", list(Compression))
def test_round_trip(kind: Compression) -> None:
    packed = COMPRESSORS[kind](DATA)
    found, reader = open_decompressed(io.BytesIO(packed))
    assert found is kind
    assert reader.read() == DATA
    _, reader = open_decompressed(_Trickle(packed))  # type: ignore[arg-type]
    out = bytearray()
    while chunk := reader.read(65536):
        assert len(chunk) <= 65536
        out += chunk
    assert out == DATA


@pytest.mark.parametrize("kind", [k for k in Compression if k is not Compression.NONE])
def test_concatenated_members(kind: Compression) -> None:
    packed = COMPRESSORS[kind](DATA) + COMPRESSORS[kind](b"second")
    _, reader = open_decompressed(io.BytesIO(packed))
    assert reader.read() == DATA + b"second"


@pytest.mark.parametrize("kind", [k for k in Compression if k is not Compression.NONE])
def test_truncated_raises(kind: Compression) -> None:
    packed = COMPRESSORS[kind](DATA)
    for cut in (7, len(packed) // 3, len(packed) - 2):
        _, reader = open_decompressed(io.BytesIO(packed[:cut]))
        with pytest.raises(ArchiveError):
            reader.read()


@pytest.mark.parametrize("kind", [k for k in Compression if k is not Compression.NONE])
def test_corrupt_raises(kind: Compression) -> None:
    garbage = COMPRESSORS[kind](b"x")[:6] + bytes(range(256)) * 4  # a valid magic, then noise
    _, reader = open_decompressed(io.BytesIO(garbage))
    with pytest.raises(ArchiveError):
        reader.read()
    packed = bytearray(COMPRESSORS[kind](DATA))
    middle = len(packed) // 2
    for i in range(middle, middle + 40):  # content: caught by the format's checksum
        packed[i] ^= 0x5A
    _, reader = open_decompressed(io.BytesIO(bytes(packed)))
    with pytest.raises(ArchiveError):
        reader.read()


@pytest.fixture(params=["libzstd", "zstandard"])
def zstd_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both zstd decoders: the system's libzstd (ctypes) and the zstandard package."""
    from aufs._sys import zstd as libzstd

    if request.param == "libzstd":
        if not libzstd.available():
            pytest.skip("no libzstd on this host")
    else:
        monkeypatch.setattr(libzstd, "available", lambda: False)
    return str(request.param)


def _zstd_read(data: bytes, threaded: bool = False) -> bytes:
    from aufs.archive.compression import open_chunks

    kind, chunks = open_chunks(io.BytesIO(data), threaded=threaded)
    assert kind is Compression.ZSTD
    out = bytearray()
    try:
        while chunk := chunks.read():
            assert len(chunk) <= 1 << 20  # bounded output, however well it compresses
            out += chunk
    finally:
        chunks.close()
    return bytes(out)


def test_zstd_backends(zstd_backend: str) -> None:
    packed = COMPRESSORS[Compression.ZSTD](DATA)
    assert _zstd_read(packed) == DATA
    assert _zstd_read(packed + COMPRESSORS[Compression.ZSTD](b"two"), threaded=True) == (
        DATA + b"two")
    padded = packed + bytes(10240 - len(packed) % 10240)  # bsdtar pads its output
    assert _zstd_read(padded) == DATA
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))  # 64 MiB from a few KiB
    assert len(_zstd_read(bomb)) == 64 << 20
    for cut in (5, len(packed) // 2, len(packed) - 1):
        with pytest.raises(ArchiveError):
            _zstd_read(packed[:cut])
    with pytest.raises(ArchiveError):
        _zstd_read(packed + b"\x01garbage")


@pytest.mark.parametrize("kind", [k for k in Compression if k is not Compression.NONE])
def test_decoder_thread_hands_errors_over(kind: Compression) -> None:
    from aufs.archive.compression import open_chunks

    packed = COMPRESSORS[kind](DATA)[:-7]
    _, chunks = open_chunks(io.BytesIO(packed), threaded=True)
    try:
        with pytest.raises(ArchiveError):
            while chunks.read():
                pass
    finally:
        chunks.close()


def test_plain_regular_file_is_read_in_place(tmp_path: Path) -> None:
    from aufs.archive.compression import open_chunks

    path = tmp_path / "plain"
    path.write_bytes(b"x" * 3000)
    with open(path, "rb") as f:
        f.seek(1000)
        kind, chunks = open_chunks(f)
        assert kind is Compression.NONE and chunks.skip is not None
        assert chunks.read() == b"x" * 2000
        chunks.close()
        assert f.tell() == 3000
