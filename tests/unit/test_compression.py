"""Compression detection (a pure table) and streaming decompression of layer tars."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
from collections.abc import Callable

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
