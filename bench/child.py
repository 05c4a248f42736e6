"""The process whose peak memory the archive benchmark measures, and how to run it.

``python3 -m bench.child idle|apply|diff ROOT ENGINE [ID]``:

- ``idle``: open the store and do nothing — the interpreter-plus-``aufs`` baseline;
- ``apply``: ``apply_diff(ID, "", stdin)``;
- ``diff``: read ``diff(ID)`` to its end and discard it;
- ``changes``: ``changes(ID)``, and print how many.

At the end it prints ``VmHWM <KiB>`` — its peak resident set, from ``/proc/self/status``.
(The parent cannot use ``ru_maxrss`` from ``wait4``: Linux carries the high-water mark of
the forked copy of the parent across ``execve`` into it.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import aufs

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ChildResult:
    returncode: int
    seconds: float
    stdout: str
    stderr: str

    def reported(self, key: str) -> int | None:
        """The integer the child printed on a line ``KEY <n>`` (its last such line)."""
        found = None
        for line in self.stdout.splitlines():
            word, _, value = line.partition(" ")
            if word == key and value.strip().isdigit():
                found = int(value)
        return found


def run_child(argv: Sequence[str], *, stdin: int | None = None) -> ChildResult:
    """Run ``argv`` to its end; its status, wall time and output.

    Peak memory must be reported by the child itself (``VmHWM`` in /proc/self/status):
    ``ru_maxrss`` from ``wait4`` is not the child's own, as Linux keeps the high-water
    mark of the (v)forked copy of this process across ``execve``.
    """
    start = time.perf_counter()
    proc = subprocess.run(list(argv), stdin=stdin, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    return ChildResult(proc.returncode, seconds, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"))


def drain(stream: IO[bytes]) -> int:
    """Read ``stream`` to its end into one reused buffer; the number of bytes."""
    total = 0
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        buf = bytearray(CHUNK)
        while n := readinto(buf):
            total += n
        return total
    while chunk := stream.read(CHUNK):
        total += len(chunk)
    return total


def main(argv: list[str]) -> int:
    job, root, engine, *rest = argv
    d = aufs.init(root, [f"aufs.engine={engine}"])
    try:
        if job == "idle":
            pass
        elif job == "apply":
            print(f"SIZE {d.apply_diff(rest[0], '', sys.stdin.buffer)}")
        elif job == "diff":
            with d.diff(rest[0]) as stream:
                print(f"BYTES {drain(stream)}")
        elif job == "changes":
            print(f"CHANGES {len(d.changes(rest[0]))}")
        else:
            print(f"unknown job {job}", file=sys.stderr)
            return 2
    finally:
        d.close()
    print(f"VmHWM {peak_rss_kib()}", flush=True)
    return 0


def peak_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
