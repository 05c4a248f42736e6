"""``aufs.unmount``: the seed's ``Unmount`` for any union this package mounted."""

from __future__ import annotations

import os

from aufs._sys import mount as sysmount
from aufs._sys import mountinfo
from aufs.union import aufs as aufs_engine
from aufs.union import fuse_overlayfs


def unmount(target: str | os.PathLike[str]) -> None:
    """Flush (``auplink`` for AUFS), then unmount ``target``, retrying on EBUSY.

    A FUSE union's daemon is waited for. Nothing mounted there is not an error.
    """
    path = os.path.realpath(os.fspath(target))
    # The mount on top: the one umount2 removes (mountinfo lists a stack bottom first).
    top = mountinfo.top_at(mountinfo.read(), path)
    if top is None:
        return
    fstype = top.fstype
    if fstype == "aufs":
        aufs_engine.unmount(path)
    elif fstype.startswith("fuse"):
        fuse_overlayfs.unmount(path)
    else:
        sysmount.unmount(path)
