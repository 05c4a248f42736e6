"""``.aufs/staging/``: things being built, renamed into place when whole.

A staging name ends in the pid of the process building it (``…-<pid>``, :func:`owner`):
recovery (:mod:`aufs.store.recover`) removes what a dead process left. The apply
transaction's seed is here: :func:`clone_tree` makes a hard-link clone of a layer's diff
(directories recreated, everything else linked: the extractor never writes into an
existing inode, it unlinks and creates).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from aufs._sys import safefs
from aufs.errors import DriverError

__all__ = ["DIR_FLAG", "clone_tree", "discard", "owner"]

DIR_FLAG = 1  # a directory, in clone_tree's map (the extractor's ``made`` flags)


def owner(name: str) -> int | None:
    """The pid a staging name ends in (``…-<pid>``), or None."""
    pid_text = name.rsplit("-", 1)[-1]
    return int(pid_text) if pid_text.isdigit() else None


def discard(path: str) -> None:
    """Remove the tree at ``path`` (never following a symlink nor crossing a mount)."""
    head, _, name = path.rpartition("/")
    fd = os.open(head, safefs.O_DIR)
    try:
        safefs.remove_at(fd, name)
    finally:
        os.close(fd)


def clone_tree(src: str, dst: str) -> dict[str, int]:
    """Make the empty directory ``dst`` a clone of ``src``: directories recreated with their
    owner, mode, xattrs and times; every other entry hard-linked. Returns every path
    below ``dst`` with its :data:`DIR_FLAG` (0 for the others)."""
    made: dict[str, int] = {}
    sfd = os.open(src, safefs.O_DIR)
    try:
        dfd = os.open(dst, safefs.O_DIR)
        try:
            st = os.fstat(sfd)
            _clone_dir(sfd, dfd, "", made, st.st_dev)
            _copy_dir_meta(st, sfd, dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return made


def _clone_dir(sfd: int, dfd: int, rel: str, made: dict[str, int], dev: int) -> None:
    with os.scandir(sfd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        path = f"{rel}/{name}" if rel else name
        if not is_dir:
            os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            made[path] = 0
            continue
        made[path] = DIR_FLAG
        os.mkdir(name, 0o700, dir_fd=dfd)
        sub_s = safefs.open_dir_at(sfd, name)
        try:
            sub_d = safefs.open_dir_at(dfd, name)
            try:
                st = os.fstat(sub_s)
                if st.st_dev != dev:
                    raise DriverError(f"a filesystem is mounted inside the layer at {path}")
                _clone_dir(sub_s, sub_d, path, made, dev)
                _copy_dir_meta(st, sub_s, sub_d)
            finally:
                os.close(sub_d)
        finally:
            os.close(sub_s)


def _copy_dir_meta(st: os.stat_result, sfd: int, dfd: int) -> None:
    """Give ``dfd`` the owner, xattrs, mode and times of ``sfd`` (whose stat is ``st``)."""
    os.fchown(dfd, st.st_uid, st.st_gid)
    for name in _listxattr(sfd):
        with contextlib.suppress(OSError):
            os.setxattr(dfd, name, os.getxattr(sfd, name))
    os.fchmod(dfd, stat.S_IMODE(st.st_mode))
    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _listxattr(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
