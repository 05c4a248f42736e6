"""The writing side of layer compression: gzip level 6 on several threads (one member per
1 MiB block), zstd with workers, none; deterministic, every byte teed in order, and safe
for a caller that reuses its buffer."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard

from aufs.archive.compression import open_decompressed
from aufs.archive.compressor import BLOCK, GZIP_LEVEL, open_compressor


def _data() -> bytes:
    rnd = os.urandom(1 << 20)  # incompressible stretches between compressible ones
    return b"".join([b"layer " * 300_000, rnd, bytes(3 << 20), rnd[:12345], b"end"])


def _compress(kind: str, data: bytes, workers: int, chunk: int = 200_000,
              teed: bytearray | None = None) -> bytes:
    out = io.BytesIO()
    sink = open_compressor(out, kind, workers=workers,
                           tee=None if teed is None else teed.extend)
    buf = bytearray(chunk)
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        buf[:len(piece)] = piece
        sink.write(bytes(buf[:len(piece)]) if len(piece) < chunk else buf)
        buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
    sink.close()
    assert not out.closed
    return out.getvalue()


def _members(gz: bytes) -> list[bytes]:
    """The gzip members of ``gz``, each decompressed on its own."""
    out = []
    while gz:
        d = zlib.decompressobj(31)
        out.append(d.decompress(gz))
        assert d.eof
        gz = d.unused_data
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_gzip_is_a_member_per_block_with_docker_s_header(workers: int) -> None:
    data = _data()
    gz = _compress("gzip", data, workers)
    # magic, deflate, no flags (no name), mtime 0: the same tar gives the same digest
    assert gz[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
    members = _members(gz)
    assert [len(m) for m in members] == [BLOCK] * (len(data) // BLOCK) + [len(data) % BLOCK]
    assert b"".join(members) == data
    assert gzip.decompress(gz) == data  # the stdlib reads them as one stream
    _, tar = open_decompressed(io.BytesIO(gz))  # and so does the import side
    assert tar.read() == data
    assert GZIP_LEVEL == 6


def test_gzip_bytes_do_not_depend_on_the_threads_or_the_writes() -> None:
    data = _data()
    one = _compress("gzip", data, 1)
    assert one == _compress("gzip", data, 4) == _compress("gzip", data, 2, chunk=BLOCK + 7)
    assert one == _compress("gzip", data, 2, chunk=3 * BLOCK)


def test_gzip_of_nothing_and_of_whole_blocks() -> None:
    assert _members(_compress("gzip", b"", 2)) == [b""]  # one empty member, as gzip writes
    data = os.urandom(1000) * (2 * BLOCK // 1000) + bytes(2 * BLOCK % 1000)
    assert [len(m) for m in _members(_compress("gzip", data, 2))] == [BLOCK, BLOCK]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_tee_sees_every_byte_in_order(kind: str) -> None:
    data = _data()
    teed = bytearray()
    _compress(kind, data, 2, chunk=300_001, teed=teed)
    assert teed == data


def test_gzip_is_read_by_gzip_and_smaller_than_zlib_s_level_6(tmp_path: Path) -> None:
    """The level's meaning: libdeflate's 6 compresses at least as well as zlib's 6 does
    (Docker's, containerd's), member boundaries and all."""
    data = b"".join(b"%08d some text of a file %s\n" % (i, b"x" * (i % 37))
                    for i in range(120_000))
    gz = _compress("gzip", data, 2)
    assert len(gz) <= len(zlib.compress(data, 6))
    path = tmp_path / "blob.gz"
    path.write_bytes(gz)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["gzip", "-dc", str(path)], capture_output=True,
                          check=True).stdout == data


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
