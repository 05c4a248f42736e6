"""Path resolution that never follows a symlink, and an atomic directory swap.

Everything here works on directory file descriptors. A path inside a tree is resolved
from the tree's root fd either by ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
(Linux 5.6+: one call, the kernel refuses any symlink and any way out) or, where the
kernel lacks it, one component at a time with ``O_NOFOLLOW | O_DIRECTORY``. Either way a
symlink anywhere on the way raises :class:`SymlinkInPathError` instead of being followed.
The ``*at`` calls of :mod:`os` (``mkdir``, ``mknod``, ``symlink``, ``link``, ``chown``
and ``utime`` with ``follow_symlinks=False``) do the rest relative to such fds.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from typing import NoReturn, overload

# aufs._sys.libc (ctypes) is imported by the calls that need it: a reader of the store
# (aufs diff, ls) uses only the flags and never loads ctypes.

__all__ = [
    "O_DIR",
    "O_FILE",
    "O_NEW",
    "O_ROOT",
    "O_SAFE",
    "O_WRITE",
    "NotADirectoryInPathError",
    "SymlinkInPathError",
    "exchange",
    "has_openat2",
    "kind",
    "open_beneath",
    "open_dir_at",
    "open_regular",
    "proc_path",
    "remove_at",
]

# The one definition of the open flags (spelled out nowhere else, but for a copy in the
# extraction's writer script, which imports nothing of aufs; a test keeps it equal).
# O_ROOT opens the directory a walk starts from (its path may go through symlinks), O_DIR
# every directory below it (never a symlink).
O_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
O_DIR = O_ROOT | os.O_NOFOLLOW
# Any file of a tree or the store, with O_RDONLY / O_RDWR: never a symlink, and a FIFO or
# device never blocks the open nor becomes the controlling terminal.
O_SAFE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
O_FILE = os.O_RDONLY | O_SAFE  # a file to read
# A file to write, made if missing, never through a symlink; O_NEW: never an existing
# inode (O_EXCL).
O_WRITE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
O_NEW = O_WRITE | os.O_EXCL
RENAME_EXCHANGE = 2
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_AT_FDCWD = -100


_O_REOPEN = O_SAFE & ~os.O_NOFOLLOW  # /proc/self/fd/N is a link to follow


def kind(mode: int) -> str:
    """What a file of ``mode`` is, for a message: "a symlink", "a FIFO", …"""
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "of an unknown type"


def open_regular(path: str, flags: int = os.O_RDONLY, *, create: bool = False,
                 mode: int = 0o644) -> tuple[int, os.stat_result]:
    """``(fd, stat)``: ``path`` open with ``flags`` (``O_RDONLY``, ``O_RDWR``) if it is a
    regular file, else ``fd`` is -1 and ``stat`` says what it is (a symlink is one, never
    followed). Missing: FileNotFoundError, or with ``create`` a new empty file of ``mode``.

    For the store's own files, which nothing trusts: a device there is never opened (an
    open alone may act, as a watchdog's or a tape's does), nor a FIFO or socket. The path
    is opened with ``O_PATH``, which opens nothing of the file itself, checked with
    ``fstat``, and reopened through ``/proc/self/fd`` (the same inode: nothing can be
    swapped in between; aufs needs ``/proc`` anyway, for the mount table).
    """
    while True:
        try:
            pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            try:  # new: it can be nothing but a regular file
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | O_SAFE, mode)
            except FileExistsError:
                continue  # made meanwhile: look at it
            return fd, os.fstat(fd)
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                return -1, st
            try:
                return os.open(f"/proc/self/fd/{pfd}", flags | _O_REOPEN), st
            except OSError as exc:  # named by the caller's path, not /proc's
                raise OSError(exc.errno, exc.strerror, path) from None
        finally:
            os.close(pfd)


class SymlinkInPathError(OSError):
    """A component of a path is a symlink (never followed)."""


class NotADirectoryInPathError(OSError):
    """A component of a path exists and is neither a directory nor a symlink."""


def exchange(a: str, b: str) -> None:
    """Swap the two paths atomically (renameat2 RENAME_EXCHANGE); both must exist.
    Neither is followed if it is a symlink (rename never follows the last component)."""
    from aufs._sys import libc

    libc.renameat2(a, b, RENAME_EXCHANGE)


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    from aufs._sys import libc

    while True:
        try:
            return libc.openat2(dir_fd, path, flags, resolve)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:  # a rename raced with RESOLVE_BENEATH: retry
                raise


@functools.cache
def has_openat2() -> bool:
    """True if this kernel has openat2(2) with RESOLVE_BENEATH (probed once)."""
    try:
        os.close(_openat2(_AT_FDCWD, "/", O_DIR, RESOLVE_NO_SYMLINKS))
    except OSError:
        return False
    return True


def open_beneath(dir_fd: int, path: str) -> int:
    """Open the directory ``path`` (relative, clean, no ``..``) below ``dir_fd``, never
    following a symlink on the way nor at the end.

    Raises :class:`SymlinkInPathError` if a component is a symlink,
    :class:`NotADirectoryInPathError` if one is something else that is no directory,
    and FileNotFoundError if one is missing.
    """
    if has_openat2():
        try:
            return _openat2(dir_fd, path, O_DIR,
                            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SymlinkInPathError(errno.ELOOP, "a symlink is in the path",
                                         path) from None
            if exc.errno == errno.ENOTDIR:
                os.close(_walk(dir_fd, path))  # raises, saying which component is wrong
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                        path) from None
            raise
    return _walk(dir_fd, path)


def _walk(dir_fd: int, path: str) -> int:
    fd = dir_fd
    try:
        for name in path.split("/"):
            sub = open_dir_at(fd, name)
            if fd != dir_fd:
                os.close(fd)
            fd = sub
    except BaseException:
        if fd != dir_fd:
            os.close(fd)
        raise
    return os.dup(fd) if fd == dir_fd else fd


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
    """Remove ``name`` in ``dir_fd`` (a whole tree if a directory, never following a
    symlink nor crossing a mount; no recursion, however deep the tree). Returns False
    if it did not exist."""
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
    _remove_tree(dir_fd, name)
    return True


def _open_same_fs(dir_fd: int, name: str, dev: int) -> int:
    fd = os.open(name, O_DIR, dir_fd=dir_fd)
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        raise OSError(errno.EBUSY, "a filesystem is mounted there", name)
    return fd


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as it:
        return [e.name for e in it]


#: Directories a removal keeps open at most, however deep the tree: an ancestor beyond
#: it is closed, and opened again through ``..`` (checked to be the same directory).
FD_WINDOW = 64


def _remove_tree(dir_fd: int, name: str) -> None:
    """Remove the directory ``name`` and everything below it, depth first, with a stack
    of directories instead of recursion, at most :data:`FD_WINDOW` of them open."""
    dev = os.fstat(dir_fd).st_dev
    top = _open_same_fs(dir_fd, name, dev)
    # frames: [fd (-1 once closed), names left to remove, own name, own inode]
    stack: list[list[object]] = [[top, _names(top), name, os.fstat(top).st_ino]]
    try:
        while stack:
            frame = stack[-1]
            fd, names, own, _ = frame
            assert isinstance(fd, int) and isinstance(names, list) and isinstance(own, str)
            if not names:
                parent = _parent_fd(stack[-2], fd, dev) if len(stack) > 1 else dir_fd
                stack.pop()
                os.close(fd)
                os.rmdir(own, dir_fd=parent)
                continue
            child: str = names.pop()
            try:
                os.unlink(child, dir_fd=fd)
                continue
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                pass
            except PermissionError:
                if not stat.S_ISDIR(os.lstat(child, dir_fd=fd).st_mode):
                    raise
            sub = _open_same_fs(fd, child, dev)
            stack.append([sub, _names(sub), child, os.fstat(sub).st_ino])
            if len(stack) > FD_WINDOW:
                far = stack[-FD_WINDOW - 1]
                if isinstance(far[0], int) and far[0] >= 0:
                    os.close(far[0])
                    far[0] = -1
    finally:
        for frame in stack:
            if isinstance(frame[0], int) and frame[0] >= 0:
                os.close(frame[0])


def _parent_fd(frame: list[object], child_fd: int, dev: int) -> int:
    """The open fd of the directory ``frame``, opened again through ``..`` of its child
    if the window closed it — refused if ``..`` is no longer that directory (moved)."""
    fd = frame[0]
    assert isinstance(fd, int)
    if fd >= 0:
        return fd
    fd = os.open("..", O_DIR, dir_fd=child_fd)
    st = os.fstat(fd)
    if st.st_dev != dev or st.st_ino != frame[3]:
        os.close(fd)
        raise OSError(errno.EBUSY, "a directory moved while it was being removed",
                      str(frame[2]))
    frame[0] = fd
    return fd


@overload
def proc_path(dir_fd: int, name: str) -> str: ...
@overload
def proc_path(dir_fd: int, name: bytes) -> bytes: ...
def proc_path(dir_fd: int, name: str | bytes) -> str | bytes:
    """A path naming ``name`` in ``dir_fd`` for calls that have no ``dir_fd`` (xattrs);
    bytes for a bytes name.

    ``/proc/self/fd/N`` resolves to the directory itself; use it with
    ``follow_symlinks=False`` so that ``name`` is not followed either.
    """
    if isinstance(name, bytes):
        return b"/proc/self/fd/%d/%s" % (dir_fd, name)
    return f"/proc/self/fd/{dir_fd}/{name}"
