"""Mounts and FUSE daemons left at or below a path: what every teardown checks."""

from __future__ import annotations

import os
from pathlib import Path

from aufs._sys import mountinfo
from aufs.union.fuse_overlayfs import daemon_pids_below


def mounts_below(path: Path | str) -> list[str]:
    """Mount points at or below ``path`` (its realpath)."""
    real = os.path.realpath(os.fspath(path))
    return [e.mountpoint for e in mountinfo.mounts_under(real)]


def fuse_daemons_below(path: Path | str) -> list[int]:
    """Pids of fuse-overlayfs daemons mounted at or below ``path``."""
    return daemon_pids_below(os.fspath(path))


def writer_processes() -> list[int]:
    """Pids of this process's children that run the extraction's file writer
    (:mod:`aufs.archive.offload`)."""
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in children:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"_writer.py") for a in argv):
                pids.append(pid)
    return pids
