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


def children(parent: int | None = None) -> list[int]:
    """Pids of the processes whose parent is ``parent`` (this process by default), from
    the ppid in ``/proc/<pid>/stat`` (``/proc/<pid>/task/*/children`` needs a kernel built
    with CONFIG_PROC_CHILDREN)."""
    parent = os.getpid() if parent is None else parent
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after
        # its last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            out.append(int(name))
    return out


def is_writer(pid: int) -> bool:
    """Does ``pid`` run the extraction's file writer (:mod:`aufs.archive.offload`)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return any(a.endswith(b"_writer.py") for a in f.read().split(b"\0"))
    except OSError:
        return False


def writer_processes() -> list[int]:
    """Pids of this process's children that run the extraction's file writer."""
    return [pid for pid in children() if is_writer(pid)]
