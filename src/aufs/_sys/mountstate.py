"""Is something mounted at a path, and does it still answer? Without asking a FUSE daemon
that may be gone: the driver's ``mounted``/``get``/``put`` and the apply transaction ask
here."""

from __future__ import annotations

import enum
import errno
import os

__all__ = ["DEAD_ERRNOS", "MountState", "has_mount", "mount_state"]


class MountState(enum.Enum):
    NONE = "not mounted"
    LIVE = "mounted"
    DEAD = "mounted, its FUSE daemon gone"


DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)  # a FUSE daemon gone


def has_mount(path: str, parent: str) -> bool:
    """Is something mounted at ``path`` (a child of ``parent``), live or dead? Unions have
    their own st_dev. Asks no FUSE daemon (``statx`` with ``AT_STATX_DONT_SYNC``: the
    device number comes from the superblock)."""
    from aufs._sys import libc  # ctypes: not for a command that never asks

    try:
        return libc.cached_dev(path) != os.lstat(parent).st_dev
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in DEAD_ERRNOS:
            return True
        raise


def mount_state(path: str, parent: str) -> MountState:
    """:func:`has_mount`, and for a mount whether its daemon still answers (statfs goes
    to a FUSE daemon)."""
    if not has_mount(path, parent):
        return MountState.NONE
    try:
        os.statvfs(path)
    except OSError as exc:
        if exc.errno in DEAD_ERRNOS:
            return MountState.DEAD
        raise
    return MountState.LIVE
