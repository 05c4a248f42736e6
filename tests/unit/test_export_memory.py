"""The export streams in constant memory: a 4 GiB sparse file, in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

GIB = 1 << 30

CHILD = textwrap.dedent("""
    import json, sys
    from aufs.archive.export import export_layer

    root = sys.argv[1]
    def hwm():  # VmHWM: ru_maxrss would carry the parent's peak across execve
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    before = hwm()
    total = 0
    found = []  # the non-zero bytes, in order: a mark split over two reads stays whole
    with export_layer(root) as stream:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
            if chunk.count(0) != len(chunk):
                found.append(chunk.replace(bytes(1), b"").decode("latin-1"))
    after = hwm()
    print(json.dumps([total, after, after - before, "".join(found)]))
""")


def test_big_sparse_file_streams_in_constant_memory(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    root.mkdir()
    size = 4 * GIB + 12345
    marks = {0: b"head", GIB: b"one-gib", 3 * GIB + 7: b"three-gib", size - 4: b"tail"}
    with open(root / "sparse", "wb") as f:
        f.truncate(size)
        for off, data in marks.items():
            f.seek(off)
            f.write(data)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True,
                          text=True, timeout=300, check=True)
    total, maxrss_kib, grew_kib, found = json.loads(proc.stdout)
    assert int(total) == 512 + size + (-size % 512) + 1024
    for mark in marks.values():
        assert mark.decode() in found
    assert int(maxrss_kib) < 64 * 1024, f"peak RSS {maxrss_kib} KiB"
    assert int(grew_kib) < 16 * 1024


def test_sparse_file_content_is_exact(tmp_path: Path) -> None:
    import tarfile

    from aufs.archive.export import export_layer

    root = tmp_path / "layer"
    root.mkdir()
    size = 3 * (1 << 20) + 100
    with open(root / "sparse", "wb") as f:
        f.truncate(size)
        f.seek(1 << 20)
        f.write(b"middle")
        f.seek(size - 3)
        f.write(b"end")
    with export_layer(str(root)) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member)
            assert data is not None
            content = data.read()
    expected = bytearray(size)
    expected[1 << 20:(1 << 20) + 6] = b"middle"
    expected[size - 3:] = b"end"
    assert content == bytes(expected)
