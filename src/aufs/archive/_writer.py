"""The file-writing process of an extraction (run as a script: imports nothing of aufs).

Started by :mod:`aufs.archive.offload` as ``python -I -S _writer.py ROOT_FD TAR_FD
OPS_FD REPLY_FD PARENT_PID STATE_FD``. It creates regular files below the directory
``ROOT_FD``, their data copied from the tar file ``TAR_FD`` at offsets it is told, while
the parent process parses the archive: the two run on two cores, each with its own
interpreter lock.

Protocol (native byte order, both ends are this machine):

- ``OPS_FD`` carries records. ``FILE``: :data:`FILE` then the file's path (relative to
  the root: directory and name). ``SYNC``: :data:`SYNC_RECORD` alone, answered
  on ``REPLY_FD`` by :data:`REPLY` once every earlier record is done: ``(0, 0)``, or the
  ``errno`` (or :data:`TRUNCATED`: the tar file ended early) and number (counted from 0
  over the whole run) of the first FILE record that failed — the records after a failure
  are skipped. End of ``OPS_FD``: exit.
- ``STATE_FD`` is a shared memory file of :data:`STATE_SLOTS` 64-bit integers the writer
  keeps up to date: :data:`S_DONE`, how many FILE records are done (written, or skipped
  after a failure up to the SYNC that reported it) — the parent forgets those, so that
  what it remembers of the files it sent stays bounded by the writer's lag, not by the
  number of files; :data:`S_REPLACED`, bytes of regular files the writer unlinked
  because a new file took their name; :data:`S_UNCOUNTED`, 1 once it unlinked a file
  with other links (the parent then counts the layer's size by a walk).
- A name that exists already is replaced (unlinked, then created) unless it is a
  directory: the parent sends a name it has not made itself only as a file of this
  archive, and keeps directories to itself.
- The owner is set only where the new file would not have it anyway (the directory's
  group where it is setgid, else this process's ids): the parent waits for the writer
  (SYNC) before it changes the mode or owner of a directory that exists, so what the
  writer learnt of a directory holds until the next SYNC.
- Directories are opened one component at a time with ``O_NOFOLLOW`` from the root (a
  symlink is never followed) and cached until the next SYNC, after which the parent may
  have removed or replaced them.

The process dies with its parent (``PR_SET_PDEATHSIG``) and ignores SIGINT: a Ctrl-C
reaches the parent, which ends it.
"""

import ctypes
import errno
import mmap
import os
import resource
import signal
import struct
import sys

# kind, path length, create mode, chmod mode (or 0xFFFF_FFFF: none), uid, gid, mtime ns,
# atime ns, data offset in the tar file, data size
FILE = struct.Struct("=BIIIIIqqqq")
REPLY = struct.Struct("=iq")
TRUNCATED = -1  # the error of a reply when the tar file ended early
K_FILE, K_SYNC = 1, 2
SYNC_RECORD = FILE.pack(K_SYNC, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # a FILE-sized record
NO_CHMOD = 0xFFFF_FFFF
STATE_SLOTS = 3
S_DONE, S_REPLACED, S_UNCOUNTED = range(STATE_SLOTS)
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PR_SET_PDEATHSIG = 1
_NOT_NAMES = (b"", b".", b"..")
# copy_file_range refused: copy through a buffer
_COPY_FALLBACK = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM)
_COPY_MIN = 128 << 10  # from here on, data moves by copy_file_range


class _Truncated(Exception):
    """The tar file ended before a file's data (it shrank meanwhile)."""


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the call
        os._exit(1)


def state_view(fd: int) -> memoryview:
    """The shared state slots in the memory file ``fd`` (its size set already)."""
    return memoryview(mmap.mmap(fd, STATE_SLOTS * 8)).cast("q")


class Writer:
    def __init__(self, root: int, tar: int, state: memoryview) -> None:
        self.root = root
        self.tar = tar
        self.state = state
        self.dirs: dict[bytes, int] = {b"": root}
        # The group a new file gets in each directory of ``dirs`` (its own where it is
        # setgid, else ours): no fchown where it would change nothing.
        self.new_gid: dict[bytes, int] = {}
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.failed: tuple[int, int] | None = None
        self.index = 0
        self.copy = True  # copy_file_range works between the tar file and the layer
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # open directories kept, well under the fd limit
        self.max_dirs = 256 if soft == resource.RLIM_INFINITY else max(4, min(256, soft // 4))

    def dir_fd(self, path: bytes) -> int:
        fd = self.dirs.get(path)
        if fd is not None:
            return fd
        if len(self.dirs) > self.max_dirs:
            self.forget_dirs()
        head, _, tail = path.rpartition(b"/")
        if tail in _NOT_NAMES:  # the parent cleans names; never step out regardless
            raise OSError(errno.EINVAL, "not a name in the layer")
        fd = os.open(tail, _O_DIR, dir_fd=self.dir_fd(head))
        self.dirs[path] = fd
        return fd

    def group_of_new(self, path: bytes, fd: int) -> int:
        gid = self.new_gid.get(path)
        if gid is None:
            st = os.fstat(fd)
            gid = self.new_gid[path] = st.st_gid if st.st_mode & 0o2000 else self.gid
        return gid

    def forget_dirs(self) -> None:
        for path, fd in self.dirs.items():
            if path:
                os.close(fd)
        self.dirs = {b"": self.root}
        self.new_gid.clear()

    def replace(self, name: bytes, dir_fd: int) -> None:
        """Unlink the non-directory ``name`` (a file of this archive, met again); its
        bytes no longer count."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if st.st_mode & 0o170000 == 0o040000:
            raise OSError(errno.EEXIST, "a directory is in the way")
        os.unlink(name, dir_fd=dir_fd)
        if st.st_mode & 0o170000 == 0o100000:
            if st.st_nlink > 1:
                self.state[S_UNCOUNTED] = 1
            else:
                self.state[S_REPLACED] += st.st_size

    def file(self, path: bytes, mode: int, chmod: int, uid: int, gid: int, mtime: int,
             atime: int, offset: int, size: int) -> None:
        dir_path, _, name = path.rpartition(b"/")
        if name in _NOT_NAMES:
            raise OSError(errno.EINVAL, "not a name in the layer")
        dir_fd = self.dir_fd(dir_path)
        try:
            fd = os.open(name, _O_NEW, mode, dir_fd=dir_fd)
        except FileExistsError:
            self.replace(name, dir_fd)
            fd = os.open(name, _O_NEW, mode, dir_fd=dir_fd)
        try:
            if size >= _COPY_MIN and self.copy:
                try:
                    while size:
                        got = os.copy_file_range(self.tar, fd, size, offset)
                        if not got:
                            raise _Truncated
                        offset += got
                        size -= got
                except OSError as exc:
                    if exc.errno not in _COPY_FALLBACK:
                        raise
                    self.copy = False  # another filesystem, say: through a buffer
            while size:
                data = os.pread(self.tar, min(size, 1 << 20), offset)
                if not data:
                    raise _Truncated
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                offset += len(data)
                size -= len(data)
            if uid != self.uid or gid != self.group_of_new(dir_path, dir_fd):
                os.fchown(fd, uid, gid)
            if chmod != NO_CHMOD:
                os.fchmod(fd, chmod)
            os.utime(fd, ns=(atime, mtime))
        finally:
            os.close(fd)

    def run(self, ops: int, reply: int) -> None:
        size = FILE.size
        unpack = FILE.unpack_from
        buf = b""
        while True:
            chunk = os.read(ops, 1 << 20)
            if not chunk:
                return
            buf = buf + chunk if buf else chunk
            pos, end = 0, len(buf)
            while pos + size <= end:
                (kind, plen, mode, chmod, uid, gid, mtime, atime, offset,
                 length) = unpack(buf, pos)
                stop = pos + size + plen
                if stop > end:
                    break
                if kind == K_SYNC:
                    pos = stop
                    self.forget_dirs()
                    err, index = self.failed or (0, 0)
                    self.failed = None
                    self.state[S_DONE] = self.index
                    os.write(reply, REPLY.pack(err, index))
                    continue
                if self.failed is None:
                    try:
                        self.file(buf[pos + size:stop], mode, chmod, uid, gid, mtime, atime,
                                  offset, length)
                    except OSError as exc:
                        self.failed = (exc.errno or errno.EIO, self.index)
                    except ValueError:  # a NUL byte in a name
                        self.failed = (errno.EINVAL, self.index)
                    except _Truncated:
                        self.failed = (TRUNCATED, self.index)
                self.index += 1
                if self.failed is None:
                    self.state[S_DONE] = self.index
                pos = stop
            buf = buf[pos:]


def main(argv: list[str]) -> None:
    root, tar, ops, reply, parent, state = (int(a) for a in argv[1:7])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it ends us
    Writer(root, tar, state_view(state)).run(ops, reply)


if __name__ == "__main__":
    main(sys.argv)
