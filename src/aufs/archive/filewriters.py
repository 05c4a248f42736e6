"""Regular files of a layer tar: created, filled and given their metadata — by the
extracting thread, or by a small pool of threads beside it.

Creating a file is kernel work (``openat``, ``write``, ``fchown``, ``fchmod``,
``futimens``, ``close``) during which Python releases the GIL, so a pool spreads it over
the cores while the extracting thread parses the next headers. A file is always new
(``O_CREAT | O_EXCL``, never an existing inode rewritten); all metadata goes through the
open fd.

The pool never decides anything about the tree: the extracting thread hands it only a
file whose name is free or held by a non-directory, and waits for it (:meth:`barrier`)
before any step that could depend on a file still being written — a hard link to it,
a second entry of the same name, a removal, a directory it would have to look up.
Memory is bounded: the data of the files in flight (views of the tar stream's chunks)
is at most ``limit_bytes``.
"""

from __future__ import annotations

import errno
import os
import queue
import threading

from aufs.archive import ArchiveError
from aufs.archive.tarread import Member
from aufs.whiteout import OVERLAY_XATTR_PREFIX

__all__ = ["Data", "FileWriters", "Policy", "copy_range", "create_file", "finish_file",
           "map_os_error", "write_views"]

O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_REFUSED = frozenset((errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM))
# Errors that come from the machine, not from the archive: raised as they are.
ENVIRONMENT_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS,
                                errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EBUSY,
                                errno.EINTR))


def map_os_error(exc: OSError, name: str) -> BaseException:
    """What an OSError met while extracting ``name`` becomes: the machine's own errors
    stay, anything else is a fault of the archive."""
    if exc.errno in ENVIRONMENT_ERRNOS or isinstance(exc, ArchiveError):
        return exc
    err = ArchiveError(f"tar entry {name!r}: {exc}")
    err.__cause__ = exc  # raised later, maybe by another thread
    return err


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
    """Set xattrs on an fd or a path (never followed); never overlayfs' own. As Docker
    does, an attribute the filesystem or the kernel refuses (ENOTSUP, EPERM) is skipped."""
    for key, value in xattrs:
        if key.startswith(OVERLAY_XATTR_PREFIX):
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _XATTR_REFUSED:
                raise


def create_file(parent: int, base: str, mode: int) -> int:
    """A new, empty file ``base`` in ``parent``; FileExistsError if the name is taken."""
    return os.open(base, O_NEW, mode, dir_fd=parent)


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


def finish_file(fd: int, m: Member, policy: Policy, chmod: bool) -> None:
    """Owner, xattrs, mode (after the chown, which clears setuid/setgid), times."""
    policy.chown(fd, m.uid, m.gid)
    if m.xattrs:
        set_xattrs(fd, m.xattrs)
    if chmod:
        os.fchmod(fd, m.mode)
    atime = m.atime_ns if m.atime_ns is not None else m.mtime_ns
    os.utime(fd, ns=(atime, m.mtime_ns))


# A file's data: views of what was read, then (file fd, offset, length) of what was not.
Data = tuple[list[memoryview], int, int, int]


def _write_new(parent: int, base: str, data: Data, m: Member, policy: Policy) -> None:
    mode, chmod = policy.create_mode(m.mode)
    try:
        fd = create_file(parent, base, mode)
    except FileExistsError:
        # The extracting thread hands over only names that are free or held by a
        # non-directory (replaced: never written into).
        try:
            os.unlink(base, dir_fd=parent)
        except IsADirectoryError:
            raise ArchiveError(f"{base!r} is a directory nobody knew of") from None
        fd = create_file(parent, base, mode)
    try:
        views, src_fd, offset, length = data
        if views:
            write_views(fd, views)
        if length:
            copy_range(src_fd, offset, length, fd)
        finish_file(fd, m, policy, chmod)
    finally:
        os.close(fd)


_STOP = None


class FileWriters:
    """A pool of ``threads`` threads that write regular files (started on first use)."""

    def __init__(self, threads: int, policy: Policy, *, limit_bytes: int = 16 << 20,
                 limit_jobs: int = 512) -> None:
        self._count = threads
        self._policy = policy
        self._limit_bytes = limit_bytes
        self._limit_jobs = limit_jobs
        self._jobs: queue.SimpleQueue[
            tuple[str, int, str, Data, Member] | None] = queue.SimpleQueue()
        self._cond = threading.Condition(threading.Lock())
        self._outstanding = 0
        self._bytes = 0
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self.pending: set[str] = set()  # names whose file is not written yet

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, name: str, parent: int, base: str, data: Data, m: Member) -> None:
        """Write the file ``name`` (``base`` in the directory fd ``parent``, which must
        stay open until the next :meth:`barrier`)."""
        if not self._threads:
            self._start()
        size = m.size - data[3]  # bytes held in memory
        with self._cond:
            while self._outstanding and (self._bytes + size > self._limit_bytes
                                         or self._outstanding >= self._limit_jobs):
                if self._error is not None:
                    break
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._outstanding += 1
            self._bytes += size
        self.pending.add(name)
        self._jobs.put((name, parent, base, data, m))

    def barrier(self) -> None:
        """Wait until every file handed over is written; raise the first failure."""
        if self._outstanding:
            with self._cond:
                while self._outstanding:
                    self._cond.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the threads once they are idle (the files handed over are then written or
        given up after a failure). Safe to call twice; raises nothing."""
        with self._cond:
            if self._error is None and self._outstanding:
                self._error = ArchiveError("extraction abandoned")
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _start(self) -> None:
        for i in range(self._count):
            thread = threading.Thread(target=self._run, name=f"aufs-apply-writer-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        policy = self._policy
        while True:
            job = self._jobs.get()
            if job is None:
                return
            name, parent, base, data, m = job
            error: BaseException | None = None
            if self._error is None:
                try:
                    _write_new(parent, base, data, m, policy)
                except OSError as exc:
                    error = map_os_error(exc, name)
                except BaseException as exc:
                    error = exc
            size = m.size - data[3]
            del data, job
            self.pending.discard(name)
            with self._cond:
                if error is not None and self._error is None:
                    self._error = error
                self._outstanding -= 1
                self._bytes -= size
                self._cond.notify_all()
