"""Small, careful file operations: atomic replace, same-filesystem removal, fd budgets."""

from __future__ import annotations

import contextlib
import errno
import os
import resource

from aufs._sys import safefs


def fd_budget(share: int, most: int, least: int = 1) -> int:
    """How many fds one cache may keep open: 1/``share`` of the soft fd limit, within
    [``least``, ``most``] (``most`` without a limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return most
    return max(least, min(most, soft // share))


def raise_fd_limit() -> None:
    """Raise the soft fd limit to the hard one, as every Go program (dockerd among them)
    does at start: a walk of a 6,000-deep layer may hold an fd a level (export, where each
    level has entries after its subdirectory), more than the usual soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # the kernel's nr_open
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def write_atomic(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = f"{path}~{os.getpid()}"  # "~" is never part of a layer id
    # A leftover of ours (a crash), or something planted at this predictable name: it
    # goes, and the file is made anew (O_EXCL): a FIFO there would block the open, a
    # device be written into.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, safefs.O_NEW, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


NO_XATTRS = (errno.ENOTSUP, errno.ENODATA, errno.EPERM, errno.EACCES)


def list_xattrs(target: int | str | bytes) -> list[str]:
    """Names of the xattrs of an open fd, or of a path (not followed); [] where the
    filesystem keeps none or they may not be seen (:data:`NO_XATTRS`)."""
    try:
        if isinstance(target, int):
            return os.listxattr(target)
        return os.listxattr(target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in NO_XATTRS:
            return []
        raise


def rmtree(path: str) -> None:
    """Remove ``path`` recursively, never following a symlink nor crossing a mount
    (:func:`aufs._sys.safefs.remove_at`, the one tree remover); a missing path is fine.

    A directory on another filesystem (a mount inside the tree) raises OSError(EBUSY)
    instead of having its contents deleted.
    """
    head, name = os.path.split(os.path.abspath(path))
    try:
        fd = os.open(head, safefs.O_ROOT)
    except FileNotFoundError:
        return
    try:
        safefs.remove_at(fd, name)
    finally:
        os.close(fd)


def ensure_dir(path: str, mode: int = 0o755) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
