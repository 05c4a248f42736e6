"""Path resolution that never follows a symlink, and an atomic directory swap.

Everything here works on directory file descriptors: a path inside a tree is walked one
component at a time with ``O_NOFOLLOW | O_DIRECTORY`` from the tree's root fd, so a
symlink anywhere on the way raises :class:`SymlinkInPathError` instead of being followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from typing import NoReturn

from aufs._sys import libc

__all__ = [
    "NotADirectoryInPathError",
    "SymlinkInPathError",
    "exchange",
    "open_dir_at",
    "proc_path",
    "remove_at",
]

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
AT_FDCWD = -100
RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276}


class SymlinkInPathError(OSError):
    """A component of a path is a symlink (never followed)."""


class NotADirectoryInPathError(OSError):
    """A component of a path exists and is neither a directory nor a symlink."""


def exchange(a: str, b: str) -> None:
    """Swap the two paths atomically (renameat2 RENAME_EXCHANGE); both must exist."""
    number = _SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"renameat2: unknown syscall number on {platform.machine()}")
    libc.syscall("renameat2", number, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(a)),
                 ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(b)),
                 ctypes.c_uint(RENAME_EXCHANGE), filename=a)


def open_dir_at(dir_fd: int, name: str, *, create: int | None = None) -> int:
    """Open the directory ``name`` (one component) in ``dir_fd`` without following it.

    ``create``: a mode to ``mkdir`` it with if it is missing. A symlink raises
    :class:`SymlinkInPathError`, another non-directory :class:`NotADirectoryInPathError`.
    """
    try:
        return os.open(name, O_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        if create is None:
            raise
    except (NotADirectoryError, OSError) as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        _raise_not_dir(dir_fd, name)
    assert create is not None
    with contextlib.suppress(FileExistsError):  # made meanwhile: open what is there now
        os.mkdir(name, create, dir_fd=dir_fd)
    try:
        return os.open(name, O_DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        _raise_not_dir(dir_fd, name)


def _raise_not_dir(dir_fd: int, name: str) -> NoReturn:
    st = os.lstat(name, dir_fd=dir_fd)
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkInPathError(errno.ELOOP, "a symlink is in the path", name)
    raise NotADirectoryInPathError(errno.ENOTDIR, "not a directory", name)


def remove_at(dir_fd: int, name: str) -> bool:
    """Remove ``name`` in ``dir_fd`` (recursively if a directory, never following a symlink
    nor crossing a mount). Returns False if it did not exist."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: unlink of a directory on some filesystems
        if not stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
            raise
    sub = os.open(name, O_DIR, dir_fd=dir_fd)
    try:
        if os.fstat(sub).st_dev != os.fstat(dir_fd).st_dev:
            raise OSError(errno.EBUSY, "a filesystem is mounted there", name)
        clear_dir(sub)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)
    return True


def clear_dir(dir_fd: int) -> None:
    """Remove everything inside the directory open as ``dir_fd``."""
    with os.scandir(dir_fd) as it:
        names = [e.name for e in it]
    for name in names:
        remove_at(dir_fd, name)


def proc_path(dir_fd: int, name: str) -> str:
    """A path naming ``name`` in ``dir_fd`` for calls that have no ``dir_fd`` (xattrs).

    ``/proc/self/fd/N`` resolves to the directory itself; use it with
    ``follow_symlinks=False`` so that ``name`` is not followed either.
    """
    return f"/proc/self/fd/{dir_fd}/{name}"
