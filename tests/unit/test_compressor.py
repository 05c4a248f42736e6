"""The writing side of layer compression: gzip level 6 on several threads in one member,
zstd with workers, none; deterministic, and safe for a caller that reuses its buffer."""

from __future__ import annotations

import io
import os
import zlib

import pytest
import zstandard

from aufs.archive.compressor import GZIP_LEVEL, open_compressor


def _data() -> bytes:
    rnd = os.urandom(1 << 20)  # incompressible stretches between compressible ones
    return b"".join([b"layer " * 300_000, rnd, bytes(3 << 20), rnd[:12345], b"end"])


def _compress(kind: str, data: bytes, workers: int, chunk: int = 200_000) -> bytes:
    out = io.BytesIO()
    sink = open_compressor(out, kind, workers=workers)
    buf = bytearray(chunk)
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        buf[:len(piece)] = piece
        sink.write(bytes(buf[:len(piece)]) if len(piece) < chunk else buf)
        buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
    sink.close()
    assert not out.closed
    return out.getvalue()


@pytest.mark.parametrize("workers", [1, 3])
def test_gzip_is_one_member_with_docker_s_header(workers: int) -> None:
    data = _data()
    gz = _compress("gzip", data, workers)
    # magic, deflate, no flags (no name), mtime 0: the same tar gives the same digest
    assert gz[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
    d = zlib.decompressobj(31)
    assert d.decompress(gz) == data
    assert d.eof and d.unused_data == b""  # one member, its CRC and size over everything
    assert GZIP_LEVEL == 6


def test_gzip_bytes_do_not_depend_on_the_number_of_threads() -> None:
    data = _data()
    assert _compress("gzip", data, 1) == _compress("gzip", data, 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_zstd_round_trips(workers: int) -> None:
    data = _data()
    zst = _compress("zstd", data, workers)
    assert zst[:4] == b"\x28\xb5\x2f\xfd"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zst) == data


def test_none_is_the_bytes_and_unknown_is_refused() -> None:
    data = _data()
    assert _compress("none", data, 2) == data
    with pytest.raises(ValueError, match="unknown compression 'lz4'"):
        open_compressor(io.BytesIO(), "lz4")


def test_zstd_with_workers_stays_small() -> None:
    """zstd's default job size (8 MiB, each with input and output buffers) took an export
    to 90 MiB RSS on two cores; 1 MiB jobs keep it small."""
    import json
    import subprocess
    import sys

    child = (
        "import io, json, os\n"
        "from aufs.archive.compressor import open_compressor\n"
        "def hwm():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1])\n"
        "class Null(io.RawIOBase):\n"
        "    def writable(self): return True\n"
        "    def write(self, b): return len(b)\n"
        "block = os.urandom(1 << 16) * 16\n"
        "before = hwm()\n"
        "z = open_compressor(Null(), 'zstd', workers=2)\n"
        "for i in range(64):\n"
        "    z.write(block[i % 7:] + block[:i % 7])\n"
        "z.close()\n"
        "print(json.dumps(hwm() - before))\n")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out) < 40 * 1024, f"grew {out} KiB"
