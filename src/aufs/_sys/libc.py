"""The one ctypes binding of libc: every foreign call goes through :func:`check`.

A failing call raises ``OSError(errno, strerror, filename)`` — the exception a
Python programmer already knows — so callers never look at ``ctypes.get_errno``.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)

_mount = _libc.mount
_mount.argtypes = [
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p,
]
_mount.restype = ctypes.c_int

_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# The new mount API has one number on every architecture (unified table, Linux 5.2+),
# and its flags.
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_OPENAT2 = 437  # unified table too (Linux 5.6+)
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276}  # older: per architecture
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100


def _raise(what: str, filename: str | None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", filename)


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2); ``data`` is passed as a NUL-terminated string (or NULL)."""
    data_b = None if data is None else ctypes.c_char_p(os.fsencode(data))
    ptr = None if data_b is None else ctypes.cast(data_b, ctypes.c_void_p)
    fs = None if fstype is None else fstype.encode()
    while _mount(os.fsencode(source), os.fsencode(target), fs, flags, ptr) != 0:
        if ctypes.get_errno() != 4:  # EINTR
            _raise("mount", target)


def umount2(target: str, flags: int = 0) -> None:
    while _umount2(os.fsencode(target), flags) != 0:
        if ctypes.get_errno() != 4:
            _raise("umount", target)


def syscall(what: str, number: int, *args: object, filename: str | None = None) -> int:
    """A raw syscall; returns its (non-negative) result or raises OSError."""
    while True:
        result = int(_syscall(ctypes.c_long(number), *args))
        if result >= 0:
            return result
        if ctypes.get_errno() != 4:
            _raise(what, filename)


_statx = getattr(_libc, "statx", None)  # glibc 2.28+
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_void_p]
    _statx.restype = ctypes.c_int

_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_DONT_SYNC = 0x4000
_STATX_TYPE = 0x1


class _Statx(ctypes.Structure):
    """struct statx up to the device numbers, padded to its full 256 bytes."""

    _fields_ = [("_head", ctypes.c_uint8 * 136), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("_tail", ctypes.c_uint8 * 112)]


def cached_dev(path: str) -> int:
    """``lstat(path).st_dev`` without asking a FUSE daemon (``AT_STATX_DONT_SYNC``: the
    device comes from the superblock, the rest from the kernel's cache)."""
    if _statx is None:
        return os.lstat(path).st_dev
    buf = _Statx()
    while _statx(AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW | _AT_STATX_DONT_SYNC,
                 _STATX_TYPE, ctypes.byref(buf)) != 0:
        if ctypes.get_errno() != 4:
            _raise("statx", path)
    return os.makedev(buf.dev_major, buf.dev_minor)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) with ``struct open_how {flags, 0, resolve}``; the new fd."""
    how = _OpenHow(flags, 0, resolve)
    return syscall("openat2", SYS_OPENAT2, ctypes.c_int(dir_fd),
                   ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                   ctypes.c_size_t(ctypes.sizeof(how)), filename=path)


def renameat2(a: str, b: str, flags: int) -> None:
    """renameat2(2) of two paths (relative to the working directory)."""
    machine = os.uname().machine
    number = SYS_RENAMEAT2.get(machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"renameat2: unknown syscall number on {machine}")
    syscall("renameat2", number, ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(a)),
            ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(b)), ctypes.c_uint(flags),
            filename=a)
