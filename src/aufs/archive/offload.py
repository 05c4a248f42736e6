"""Regular files of an extraction written by a second process, beside the parser.

CPython runs Python code on one core at a time: a thread that makes system calls and
one that parses hand the interpreter lock back and forth at every call, and lose more
than they overlap (measured: 1.6-1.9x slower). A second *process* has its own lock. When
an uncompressed layer tar is extracted from a regular file, :class:`Offload` starts
:mod:`aufs.archive._writer` and sends it, for each plain regular file, where the file goes
and where its data lies in the tar file; the writer creates it, copies the data
(``pread``/``copy_file_range`` from the tar file), sets owner, mode and times. The
extractor keeps everything else (directories, links, whiteouts, all decisions and
bookkeeping) and calls :meth:`Offload.barrier` before it touches a name the writer may
still be working on. An error of the writer is raised at the next barrier, as the
extractor would have raised it.

Memory stays flat however many files go through: the writer counts the files it has done
in a small shared memory file, and :class:`Offload` forgets those (it keeps the names of
the files sent and not known to be done — a few hundred, as the extractor writes files
itself while the writer is :meth:`~Offload.behind`).

The writer writes only below the extraction's root fd, opening directories one component
at a time with ``O_NOFOLLOW``; it dies with this process. If it cannot be started, the
extractor writes the files itself.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import subprocess
import sys
import termios

from aufs.archive import _writer as w
from aufs.archive.writefile import map_os_error
from aufs.errors import ArchiveError

__all__ = ["Offload"]

_FLUSH = 32 << 10  # bytes of records collected before they are sent (each send may
# wake the writer: fewer, bigger ones cost less)
_PIPE_SIZE = 1 << 20
_BEHIND = 96 << 10  # about 1,300 files
_ASK_EVERY = 16
_pack = w.FILE.pack
_FORGET_EVERY = 512  # files sent between two looks at what the writer has done


def _can_run_writer() -> bool:
    """A Python interpreter to run and the writer as a file (not in a zip, not frozen
    into an application whose executable would start the application again)."""
    exe = sys.executable
    return (bool(exe) and not getattr(sys, "frozen", False)
            and os.path.basename(exe).startswith("python") and os.path.isfile(w.__file__))


class Offload:
    """A running writer process; :meth:`start` returns None where none can run."""

    def __init__(self, proc: subprocess.Popen[bytes], ops: int, reply: int,
                 state: memoryview) -> None:
        self._proc = proc
        self._ops = ops
        self._reply = reply
        self._state = state
        self._out = bytearray()
        self._sent = 0  # FILE records sent, ever (the writer numbers them alike)
        # (number, path, entry name) of the files sent and not known to be done
        self._pending: collections.deque[tuple[int, str, str]] = collections.deque()
        self.queued: dict[str, int] = {}  # their paths (-> latest number): maybe unmade
        self._forget_at = _FORGET_EVERY
        self._closed = False
        self._asks = 0
        self._behind = False

    @property
    def pid(self) -> int:
        """The writer's process id (a child of this process)."""
        return self._proc.pid

    @classmethod
    def start(cls, root_fd: int, tar_fd: int) -> Offload | None:
        if not _can_run_writer():
            return None
        # The writer's fds 0-2 are its own (/dev/null, a pipe): a tar file that is our
        # stdin (``aufs apply ID - < layer.tar``) is handed over as a copy above them.
        root_fd = fcntl.fcntl(root_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        tar_fd = fcntl.fcntl(tar_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        try:
            state_fd = os.memfd_create("aufs-writer-state", os.MFD_CLOEXEC)
        except (OSError, AttributeError):
            os.close(root_fd)
            os.close(tar_fd)
            return None
        ops_r, ops_w = os.pipe2(os.O_CLOEXEC)
        reply_r, reply_w = os.pipe2(os.O_CLOEXEC)
        try:
            os.ftruncate(state_fd, w.STATE_SLOTS * 8)
            state = w.state_view(state_fd)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", w.__file__, str(root_fd), str(tar_fd),
                 str(ops_r), str(reply_w), str(os.getpid()), str(state_fd)],
                pass_fds=(root_fd, tar_fd, ops_r, reply_w, state_fd),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except BaseException as exc:
            for fd in (ops_r, ops_w, reply_r, reply_w):
                os.close(fd)
            if isinstance(exc, OSError):
                return None
            raise
        finally:
            os.close(root_fd)
            os.close(tar_fd)
            os.close(state_fd)
        os.close(ops_r)
        os.close(reply_w)
        with contextlib.suppress(OSError):  # room for records while the writer starts
            fcntl.fcntl(ops_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        return cls(proc, ops_w, reply_r, state)

    def file(self, name: str, path: str, mode: int, chmod: int | None, uid: int, gid: int,
             mtime_ns: int, atime_ns: int, offset: int, size: int) -> None:
        """Queue the regular file ``path`` (relative to the root; its directory made
        already), created with ``mode``, then owned, ``chmod``-ed and timed; its ``size``
        bytes are at ``offset`` of the tar file. ``name``: the entry, for errors."""
        raw = path.encode("utf-8", "surrogateescape")
        out = self._out
        out += _pack(w.K_FILE, len(raw), mode, w.NO_CHMOD if chmod is None else chmod, uid,
                     gid, mtime_ns, atime_ns, offset, size)
        out += raw
        number = self._sent
        self._sent = number + 1
        self._pending.append((number, path, name))
        self.queued[path] = number
        if len(out) >= _FLUSH:
            self._send()
            if number >= self._forget_at:
                self._forget_done()

    def _forget_done(self) -> None:
        """Drop the files the writer has done from what is remembered of them."""
        done = self._state[w.S_DONE]
        pending, queued = self._pending, self.queued
        while pending and pending[0][0] < done:
            number, path, _ = pending.popleft()
            if queued.get(path) == number:
                del queued[path]
        self._forget_at = self._sent + _FORGET_EVERY

    def replaced(self) -> int | None:
        """Bytes of regular files the writer replaced (a name met again), or None if one
        of them had other links (the size of the tree is then unknown). Valid after
        ``barrier(final=True)``."""
        return None if self._state[w.S_UNCOUNTED] else self._state[w.S_REPLACED]

    def behind(self) -> bool:
        """The writer has more than :data:`_BEHIND` bytes of records still to read: the
        caller had better write the next file itself (both processes stay busy). Asked
        of the pipe every :data:`_ASK_EVERY` calls, not every file."""
        self._asks -= 1
        if self._asks <= 0:
            self._asks = _ASK_EVERY
            buf = fcntl.ioctl(self._ops, termios.FIONREAD, b"\0\0\0\0")
            self._behind = int.from_bytes(buf, sys.byteorder) + len(self._out) > _BEHIND
        return self._behind

    def barrier(self, *, final: bool = False) -> None:
        """Wait until every queued file is written; raise the first error among them.
        ``final``: ask the writer even if every file is known done (its other counts are
        then surely up to date)."""
        if not self._pending and not (final and self._sent):
            return
        self._out += w.SYNC_RECORD
        self._send()
        data = b""
        while len(data) < w.REPLY.size:
            chunk = os.read(self._reply, w.REPLY.size - len(data))
            if not chunk:
                raise ArchiveError(f"the file-writing process died{self._stderr()}")
            data += chunk
        err, index = w.REPLY.unpack(data)
        pending = self._pending
        self._pending = collections.deque()
        self.queued.clear()
        self._forget_at = self._sent + _FORGET_EVERY
        if err:
            name = next((n for number, _, n in pending if number == index), "?")
            if err == w.TRUNCATED:
                raise ArchiveError(f"tar entry {name!r}: truncated tar stream (the file "
                                   "ended meanwhile)")
            raise map_os_error(OSError(err, os.strerror(err), name), name)

    def _send(self) -> None:
        view = memoryview(self._out)
        try:
            while view:
                view = view[os.write(self._ops, view):]
        except BrokenPipeError:
            raise ArchiveError(f"the file-writing process died{self._stderr()}") from None
        finally:
            view.release()
        self._out.clear()

    def _stderr(self) -> str:
        with contextlib.suppress(Exception):
            self._proc.kill()
            _, err = self._proc.communicate(timeout=5)
            text = err.decode("utf-8", "replace").strip().splitlines()
            if text:
                return f": {text[-1]}"
        return ""

    def close(self) -> None:
        """End the writer: at once (killed) unless every file was waited for."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        try:
            if self._pending:
                proc.kill()
            os.close(self._ops)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        except BaseException:  # an interrupt while waiting: it must not outlive us
            proc.kill()
            proc.wait()
            raise
        finally:
            os.close(self._reply)
            if proc.stderr is not None:
                proc.stderr.close()
