"""One regular file of a layer tar: created, filled, given its metadata.

A file is always new (``O_CREAT | O_EXCL``: an existing inode is never written into) and
is created with its final permission bits where the umask lets them through, so that the
usual file costs ``openat``, ``write``, ``fchown``, ``futimens`` and ``close`` — one
call fewer than GNU tar. Metadata goes through the open fd; the owner before the mode
(a chown clears setuid/setgid). Data read from the stream is written from views of its
chunks; data left in a tar *file* is moved by ``copy_file_range`` without passing
through this process.
"""

from __future__ import annotations

import errno
import os

from aufs.errors import ArchiveError
from aufs.whiteout import UNION_XATTR_PREFIXES

__all__ = ["Policy", "copy_range", "map_os_error",
           "set_xattrs", "write_views"]

_XATTR_REFUSED = frozenset((errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM))
# Errors that come from the machine, not from the archive: raised as they are.
ENVIRONMENT_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO,
                                errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                                errno.EBUSY, errno.EINTR))


def map_os_error(exc: OSError, name: str) -> BaseException:
    """What an OSError met while extracting ``name`` becomes: the machine's own errors
    stay, anything else is a fault of the archive."""
    if exc.errno in ENVIRONMENT_ERRNOS or isinstance(exc, ArchiveError):
        return exc
    return ArchiveError(f"tar entry {name!r}: {exc}")


def _read_umask() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class Policy:
    """How ownership and modes are written, decided once per extraction."""

    def __init__(self) -> None:
        self.root = os.geteuid() == 0
        self.uid, self.gid = os.geteuid(), os.getegid()
        umask = _read_umask()
        # Permission bits a file may be created with directly (no fchmod after): those
        # the umask lets through. Unknown umask: always fchmod.
        self.direct = 0o777 & ~umask if umask is not None else 0

    def create_mode(self, mode: int) -> tuple[int, bool]:
        """(mode to create with, whether a chmod must follow the chown)."""
        if mode & ~self.direct:  # setuid/setgid/sticky, or bits the umask would drop
            return 0o600, True
        return mode, False

    def chown(self, fd: int | str, uid: int, gid: int, dir_fd: int | None = None) -> None:
        if not self.root and uid == self.uid and gid == self.gid:
            return
        try:
            if isinstance(fd, int):
                os.fchown(fd, uid, gid)
            else:
                os.chown(fd, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        except PermissionError:
            if self.root:
                raise  # else: an unprivileged extraction keeps its own ids (GNU tar's way)
        except OSError as exc:
            if self.root or exc.errno != errno.EINVAL:  # EINVAL: id unmapped in a userns
                raise


def set_xattrs(target: int | str, xattrs: list[tuple[str, bytes]]) -> None:
    """Set xattrs on an fd or a path (never followed); never a union engine's own
    (``trusted.overlay.*``, ``user.overlay.*``, ``user.fuseoverlayfs.*``: they come from
    whiteouts only; a ``user.fuseoverlayfs.origin`` makes fuse-overlayfs 1.10 serve
    another file's data: :mod:`aufs.union.fuse_tidy`). As Docker does, an attribute the
    filesystem or the kernel refuses (ENOTSUP, EPERM) is skipped."""
    for key, value in xattrs:
        if key.startswith(UNION_XATTR_PREFIXES):
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _XATTR_REFUSED:
                raise


def write_views(fd: int, views: list[memoryview]) -> None:
    if len(views) == 1:
        view = views[0]
        while view:
            view = view[os.write(fd, view):]
        return
    written = os.writev(fd, views)
    total = sum(len(v) for v in views)
    if written < total:  # a short write (rare on files): the rest one view at a time
        for view in views:
            if written >= len(view):
                written -= len(view)
                continue
            view = view[written:]
            written = 0
            while view:
                view = view[os.write(fd, view):]


_COPY_FALLBACK = frozenset((errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                            errno.ENOTSUP, errno.EBADF, errno.EPERM))


def copy_range(src_fd: int, offset: int, length: int, fd: int) -> None:
    """Append ``length`` bytes at ``offset`` of the file ``src_fd`` to ``fd``: in the
    kernel (``copy_file_range``, else ``sendfile``), else through a buffer."""
    end = offset + length
    try:
        while offset < end:
            n = os.copy_file_range(src_fd, fd, end - offset, offset)
            if not n:
                raise ArchiveError("truncated tar stream (the file ended meanwhile)")
            offset += n
        return
    except OSError as exc:
        if exc.errno not in _COPY_FALLBACK:
            raise
    try:
        while offset < end:
            n = os.sendfile(fd, src_fd, offset, end - offset)
            if not n:
                raise ArchiveError("truncated tar stream (the file ended meanwhile)")
            offset += n
        return
    except OSError as exc:
        if exc.errno not in _COPY_FALLBACK:
            raise
    while offset < end:
        data = os.pread(src_fd, min(end - offset, 1 << 20), offset)
        if not data:
            raise ArchiveError("truncated tar stream (the file ended meanwhile)")
        write_views(fd, [memoryview(data)])
        offset += len(data)
