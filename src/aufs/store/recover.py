"""Finish what a crash left: ``*-removing`` leftovers, staging dirs, half-created layers."""

from __future__ import annotations

import contextlib
import os

from aufs._sys import mount as sysmount
from aufs._sys import mountinfo
from aufs._sys.files import rmtree
from aufs.store import staging
from aufs.store.layout import REMOVING_SUFFIX, Layout


def finish(layout: Layout) -> list[str]:
    """Complete interrupted removals and drop abandoned staging; return what was removed.

    A layer exists iff ``layers/<id>`` does. ``layers/<id>-removing`` means a removal
    had started: its ``diff``, ``mnt`` and ``work`` dirs go too, then the marker.
    """
    removed: list[str] = []
    for top in (layout.mnt_dir, layout.diff_dir, layout.work_dir):
        for name in _names(top):
            if name.endswith(REMOVING_SUFFIX):
                path = os.path.join(top, name)
                with contextlib.suppress(OSError):
                    rmtree(path)
                    removed.append(path)
    for name in _names(layout.layers_dir):
        path = os.path.join(layout.layers_dir, name)
        if name.endswith(REMOVING_SUFFIX):
            layer_id = name[: -len(REMOVING_SUFFIX)]
            for leftover in (layout.mnt(layer_id), layout.diff(layer_id), layout.work(layer_id),
                             layout.refs(layer_id)):
                with contextlib.suppress(OSError):
                    rmtree(leftover)
                    removed.append(leftover)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        elif "~" in name:  # an unfinished atomic write
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    # A create killed before it published layers/<id> leaves empty diff/<id> and mnt/<id>.
    # Only empty dirs go (rmdir): a non-empty diff/<id> may be a migration's moved layer.
    for top in (layout.diff_dir, layout.mnt_dir):
        for name in _names(top):
            path = os.path.join(top, name)
            if not name.endswith(REMOVING_SUFFIX) and not os.path.lexists(layout.layers(name)):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                    removed.append(path)
    for name in _names(layout.staging_dir):
        path = layout.staging(name)
        if _owner_alive(name):
            continue
        # A process killed mid-probe leaves its scratch union mounted in its staging dir.
        for entry in reversed(list(mountinfo.mounts_under(path))):
            with contextlib.suppress(OSError):
                sysmount.unmount(entry.mountpoint)
        with contextlib.suppress(OSError):
            rmtree(path)
            removed.append(path)
    return removed


def _names(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_alive(name: str) -> bool:
    """Staging names end in ``-<pid>``; keep those whose process still runs."""
    pid = staging.owner(name)
    if pid is None:
        return False
    return pid == os.getpid() or pid_alive(pid)
