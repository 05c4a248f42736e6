"""A directory of many files: its listing is held whole while the diff walks it, so each
entry must cost little (no DirEntry kept for a plain name)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

FILES = 60_000

CHILD = textwrap.dedent("""
    import json, sys
    from aufs.archive.export import export_layer

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    buf = bytearray(1 << 20)
    before = hwm()
    names = 0
    with export_layer(sys.argv[1]) as stream:
        while n := stream.readinto(buf):
            names += bytes(buf[:n]).count(b"ustar")
    print(json.dumps([hwm() - before, names]))
""")


def test_a_directory_of_many_files_streams_in_little_memory(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    root.mkdir()
    for i in range(FILES):
        fd = os.open(root / f"file-with-a-longish-name-{i:06d}", os.O_WRONLY | os.O_CREAT,
                     0o644)
        os.close(fd)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True,
                          text=True, timeout=300, check=True)
    grew_kib, members = json.loads(proc.stdout)
    assert members == FILES
    # 60,000 listed names: ~18 MiB with a DirEntry each, ~8 without
    assert grew_kib < 12 * 1024, f"grew {grew_kib} KiB"


CHANGES_CHILD = textwrap.dedent("""
    import json, sys
    from aufs.archive.changes import layer_changes

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    before = hwm()
    changes = layer_changes([sys.argv[2]], sys.argv[1])
    print(json.dumps([hwm() - before, len(changes), changes[0].path, changes[-1].path]))
""")


def test_changes_of_a_directory_of_many_files_in_little_memory(tmp_path: Path) -> None:
    """No DirEntry kept per name, no (path, kind) tuple beside each Change."""
    root = tmp_path / "layer"
    root.mkdir()
    lower = tmp_path / "lower"
    lower.mkdir()
    for i in range(FILES):
        os.close(os.open(root / f"f{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644))
    proc = subprocess.run([sys.executable, "-c", CHANGES_CHILD, str(root), str(lower)],
                          capture_output=True, text=True, timeout=300, check=True)
    grew_kib, count, first, last = json.loads(proc.stdout)
    assert (count, first, last) == (FILES, "/f000000", f"/f{FILES - 1:06d}")
    # ~21 MiB with a DirEntry per name and a tuple per change, ~12 without
    assert grew_kib < 16 * 1024, f"grew {grew_kib} KiB"
