"""Small, careful file operations: atomic replace, same-filesystem removal, fd budgets."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from collections.abc import Iterator


def fd_budget(share: int, most: int, least: int = 1) -> int:
    """How many fds one cache may keep open: 1/``share`` of the soft fd limit, within
    [``least``, ``most``] (``most`` without a limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return most
    return max(least, min(most, soft // share))


def write_atomic(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = f"{path}~{os.getpid()}"  # "~" is never part of a layer id
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
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


def rmtree(path: str) -> None:
    """Remove ``path`` recursively, never following a symlink nor crossing a mount.

    A directory on another filesystem (a mount inside the tree) raises OSError(EBUSY)
    instead of having its contents deleted.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    if os.lstat(os.path.dirname(os.path.abspath(path))).st_dev != st.st_dev:
        raise OSError(errno.EBUSY, "a filesystem is mounted there", path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _rmtree_fd(fd, st.st_dev, path)
    finally:
        os.close(fd)
    os.rmdir(path)


def _rmtree_fd(dir_fd: int, dev: int, where: str) -> None:
    with os.scandir(dir_fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dir_fd)
            try:
                if os.fstat(sub).st_dev != dev:
                    raise OSError(errno.EBUSY, "a filesystem is mounted inside the tree",
                                  f"{where}/{entry.name}")
                _rmtree_fd(sub, dev, f"{where}/{entry.name}")
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dir_fd)
        else:
            os.unlink(entry.name, dir_fd=dir_fd)


def ensure_dir(path: str, mode: int = 0o755) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)


DirStep = tuple[int, str, list[os.DirEntry[str]]]


def walk_dirs(root: str, skip_prefix: str = "") -> Iterator[DirStep]:
    """Each directory under ``root`` (itself first): an open fd, its path below ``root``
    ("" for the root) and its entries. No symlink is followed, no mount point crossed, and
    no directory whose name starts with ``skip_prefix`` (if given) entered. The fd is
    valid until the next step."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    dev = os.fstat(root_fd).st_dev
    stack = [(root_fd, "")]
    try:
        while stack:
            fd, rel = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                yield fd, rel, entries
                for e in entries:
                    if ((skip_prefix and e.name.startswith(skip_prefix))
                            or not e.is_dir(follow_symlinks=False)):
                        continue
                    sub = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=fd)
                    if os.fstat(sub).st_dev != dev:
                        os.close(sub)
                        continue
                    stack.append((sub, f"{rel}/{e.name}" if rel else e.name))
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
