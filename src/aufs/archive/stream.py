"""A readable tar stream, produced on demand while the caller reads it.

A walk (a generator) yields members: header bytes and, for a regular file, an open fd
and a size. :class:`TarReader` turns them into bytes *inside the caller's read*:
headers are copied into the caller's buffer and file data is read with ``preadv``
straight into it — one copy from the page cache, no pipe, no thread, no lock. Memory is
one directory listing per open directory level plus whatever buffer the caller reads
into, whatever the size of the layer. Holes of sparse files are found with
``SEEK_DATA``/``SEEK_HOLE`` and produced as zeros without reading them.

Measured on a 160 MB / 6,600-file tree (page cache warm, reads of 1 MiB): as fast as
``tar -cf - DIR | cat >/dev/null`` (0.95-1.05x, median of 15), where a producer thread
feeding a pipe (``splice`` for file data) was 1.3-1.5x: the pipe costs a copy, page
allocations and GIL hand-offs, and Python cannot overlap enough work on two cores to
pay for them.

Into a file descriptor (:meth:`TarStream.write_into`, :func:`write_stream`): headers
and small files are gathered in one buffer, reused for the whole stream, and written
with one ``write`` a MiB; the data of each file of ``SENDFILE_MIN`` bytes or more goes
from its file to the output with ``sendfile`` — the kernel copies, the bytes never
enter Python. That is how the CLI's ``diff`` writes to stdout or ``-o FILE``, and how a
server answers with a layer (the Docker plugin's ``Diff``): ``write_stream(stream,
sock_fd)``.

Files are read ahead (:class:`ReadAhead`): the walk runs up to 64 files / 32 MiB in front
of the reader, and each file it opens is handed to the kernel with
``POSIX_FADV_WILLNEED``, so on a cold cache the disk works on many files at once instead
of one read at a time. On a Debian root fs read from disk this took reading every file
from 1.6 s (one at a time, as GNU tar does) to 0.7 s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO

from aufs._sys.files import fd_budget
from aufs.archive.tarwrite import BLOCK, END_OF_ARCHIVE
from aufs.errors import ArchiveError
from aufs.observe import entry_hook

# (header bytes, fd of the file's data or -1, data size, sparse?). The reader owns fd.
# With fd -1 the bytes are whole members: a header (size 0), or a batch of ``size``
# members, data and padding included (the walk read small files itself).
Member = tuple[bytes, int, int, bool]

_ZEROS = memoryview(bytes(1 << 20))  # calloc'ed: costs no memory until read

AHEAD_FILES = 64
AHEAD_BYTES = 32 << 20
# Members of all kinds queued: headers alone (directories, links, devices) hold no file
# and few bytes, and a layer may have a million of them after one open file.
AHEAD_MEMBERS = 1024
WARM_FILES = 256  # files read without waiting, after which hints stop
_FADVISE_MAX = 4 << 20  # per file: the kernel's own readahead takes over after this
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
SENDFILE_MIN = 64 << 10  # write_into: files this big go by sendfile, smaller ones buffered
_WRITE_BUFFER = 1 << 20
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ: int = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ: int = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)


class ReadAhead:
    """``members``, pulled up to ``files`` open files or ``size`` bytes (or
    ``AHEAD_MEMBERS`` members of any kind) ahead of the consumer, each file's data asked
    for (``POSIX_FADV_WILLNEED``) as it is queued.

    The hint costs a system call per file, which buys nothing when the data is cached
    already: after ``warm`` files in a row read without waiting it stops, and the first
    read that would wait (:meth:`missed`) starts it again, queued files included.
    Closing closes the files still queued, then ``members``.
    """

    def __init__(self, members: Iterator[Member], *, files: int = AHEAD_FILES,
                 size: int = AHEAD_BYTES, warm: int = WARM_FILES) -> None:
        self._members = members
        self._queue: deque[Member] = deque()
        self._files = 0
        self._bytes = 0
        # A low fd limit leaves room for the walk's directories and the caller's files.
        self._max_files = fd_budget(8, files)
        self._max_bytes = size
        self._advise = True
        self._since_miss = 0
        self._warm = warm

    def __iter__(self) -> Iterator[Member]:
        return self

    def __next__(self) -> Member:
        queue = self._queue
        while not queue or (self._files < self._max_files and self._bytes < self._max_bytes
                            and len(queue) < AHEAD_MEMBERS):
            member = next(self._members, None)
            if member is None:
                break
            if member[1] < 0 and not queue:
                return member
            if member[1] >= 0:
                self._files += 1
                self._bytes += member[2]
                if self._advise:
                    _advise(member)
            elif member[2]:  # a batch: its bytes are memory, count it as a file
                self._files += 1
                self._bytes += len(member[0])
            queue.append(member)
        if not queue:
            raise StopIteration
        member = queue.popleft()
        if member[1] >= 0:
            self._files -= 1
            self._bytes -= member[2]
            self._since_miss += 1
            if self._since_miss > self._warm:
                self._advise = False
        elif member[2]:
            self._files -= 1
            self._bytes -= len(member[0])
        return member

    def missed(self) -> None:
        """A read had to wait for the disk: hint again, beginning with what is queued."""
        self._since_miss = 0
        if not self._advise:
            self._advise = True
            for member in self._queue:
                if member[1] >= 0:
                    _advise(member)

    def always(self) -> None:
        """Hint for every file from now on (reads cannot tell a cached file)."""
        self.missed()
        self._warm = 1 << 62

    def close(self) -> None:
        queue = self._queue
        while queue:
            fd = queue.popleft()[1]
            if fd >= 0:
                os.close(fd)
        close = getattr(self._members, "close", None)
        if close is not None:
            close()


def _advise(member: Member) -> None:
    if member[2] and not member[3]:  # not for sparse files: their holes read as zeros
        with contextlib.suppress(OSError):  # only a hint
            os.posix_fadvise(member[1], 0, min(member[2], _FADVISE_MAX),
                             os.POSIX_FADV_WILLNEED)


class TarReader(io.RawIOBase):
    """Raw binary stream over a generator of members; wrap it in ``io.BufferedReader``."""

    def __init__(self, members: ReadAhead, name: str,
                 on_close: list[Callable[[], None]]) -> None:
        super().__init__()
        self._members = members
        self._nowait = _RWF_NOWAIT
        self._name = name
        self._on_close = on_close
        self._pending: bytes | memoryview = b""  # header or padding bytes not yet handed out
        self._fd = -1            # file whose data is being handed out
        self._off = 0
        self._size = 0
        self._sparse = False
        self._seg_end = 0        # sparse: end of the current data or hole segment
        self._seg_hole = False
        self._ended = False
        self._on_entry = entry_hook()  # of the code that made the stream
        self._kernel_min = 0     # write_into: a file this big is left to sendfile (0: never)
        self._kernel = False     # write_into: the current file's data goes by sendfile
        self._produced = 0       # bytes handed out by readinto

    @property
    def name(self) -> str:
        return self._name

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """Bytes handed out by readinto (a BufferedReader over this subtracts what it
        holds: TarStream.write_into learns so what it must write first)."""
        return self._produced

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        with memoryview(buffer) as raw:
            try:
                if raw.itemsize == 1 and raw.ndim == 1:
                    n = self._fill(raw)
                else:
                    with raw.cast("B") as view:
                        n = self._fill(view)
                self._produced += n
                return n
            except ArchiveError:
                raise
            except OSError as exc:
                raise ArchiveError(f"cannot archive {self._name}: {exc}") from exc

    def _fill(self, view: memoryview) -> int:
        n = len(view)
        pos = 0
        pread = self._pread
        members = self._members
        on_entry = self._on_entry
        kernel_min = self._kernel_min
        while pos < n:
            if self._pending or self._fd >= 0:
                if self._kernel and not self._pending:
                    break  # write_into sends this file's data itself
                pos = self._fill_partial(view, pos)
                continue
            try:
                hdr, fd, size, sparse = next(members)
            except StopIteration:
                if self._ended:
                    break
                self._ended = True
                self._pending = END_OF_ARCHIVE
                continue
            if on_entry is not None:
                for _ in range(size if fd < 0 and size else 1):
                    on_entry()
            hlen = len(hdr)
            if fd < 0:
                if pos + hlen <= n:
                    view[pos:pos + hlen] = hdr
                    pos += hlen
                else:
                    self._pending = memoryview(hdr)  # sliced as it goes out, not copied
                continue
            pad = -size % BLOCK
            start = pos + hlen
            end = start + size
            if kernel_min and size >= kernel_min and not sparse:
                self._kernel = True  # the header here, the data by write_into's sendfile
                end = n + 1
            if sparse or end + pad > n:  # does not fit whole: go piece by piece
                if start <= n:
                    view[pos:start] = hdr
                    pos = start
                else:
                    self._pending = hdr
                if size > 0:
                    self._fd, self._off, self._size = fd, 0, size
                    self._sparse, self._seg_end = sparse, 0
                else:
                    os.close(fd)
                continue
            try:
                view[pos:start] = hdr
                while start < end:
                    got = pread(fd, view[start:end], start - pos - hlen)
                    if got == 0:
                        self._off, self._size = start - pos - hlen, size
                        self._shrank()
                    start += got
            finally:
                os.close(fd)
            if pad:
                view[end:end + pad] = END_OF_ARCHIVE[:pad]
            pos = end + pad
        return pos

    def _fill_partial(self, view: memoryview, pos: int) -> int:
        """Continue a member that did not fit in one read: header, data, padding."""
        n = len(view)
        pending = self._pending
        if pending:
            take = min(len(pending), n - pos)
            view[pos:pos + take] = pending[:take]
            self._pending = pending[take:]
            return pos + take
        want = min(self._size - self._off, n - pos)
        if self._sparse:
            pos += self._fill_sparse(view, pos, want)
        else:
            got = self._pread(self._fd, view[pos:pos + want], self._off)
            if got == 0:
                self._shrank()
            pos += got
            self._off += got
        if self._off >= self._size:
            self._end_file()
        return pos

    def _fill_sparse(self, view: memoryview, pos: int, want: int) -> int:
        off = self._off
        if off >= self._seg_end:
            try:
                data = os.lseek(self._fd, off, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: only a hole remains
                    raise
                data = self._size
            if data > off:
                self._seg_hole, self._seg_end = True, min(data, self._size)
            else:
                self._seg_hole = False
                self._seg_end = min(os.lseek(self._fd, off, os.SEEK_HOLE), self._size)
        want = min(want, self._seg_end - off)
        if self._seg_hole:
            want = min(want, len(_ZEROS))
            view[pos:pos + want] = _ZEROS[:want]
            got = want
        else:
            got = self._pread(self._fd, view[pos:pos + want], off)
            if got == 0:
                self._shrank()
        self._off = off + got
        return got

    def _pread(self, fd: int, buf: memoryview, off: int) -> int:
        """``preadv`` that tells the read-ahead when it had to wait for the disk."""
        if self._nowait:
            try:
                return os.preadv(fd, [buf], off, self._nowait)
            except BlockingIOError:
                self._members.missed()
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                self._nowait = 0  # this filesystem cannot say: always hint
                self._members.always()
        return os.preadv(fd, [buf], off)

    def write_into(self, out: int, on_bytes: Callable[[int], object] | None = None) -> int:
        """Write the rest of the stream into the file descriptor ``out`` (a pipe, a file,
        a socket); return the number of bytes written. ``on_bytes(n)`` after each write.

        Headers and files under ``SENDFILE_MIN`` bytes are gathered in one buffer and
        written a MiB at a time; larger files go by ``sendfile`` (where ``out`` cannot
        take it, through the buffer). Errors reading the layer are ArchiveError; errors
        writing ``out`` (EPIPE, ENOSPC) are the OSError the write raised.
        """
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        _grow_pipe(out)
        view = memoryview(bytearray(_WRITE_BUFFER))  # one buffer for the whole stream
        total = 0
        self._kernel_min = SENDFILE_MIN
        try:
            while True:
                try:
                    pos = self._fill(view)
                except ArchiveError:
                    raise
                except OSError as exc:
                    raise ArchiveError(f"cannot archive {self._name}: {exc}") from exc
                if pos:
                    _write_all(out, view[:pos])
                    total += pos
                    if on_bytes is not None:
                        on_bytes(pos)
                if self._kernel:
                    sent = self._send(out)
                    total += sent
                    if on_bytes is not None and sent:
                        on_bytes(sent)
                elif not pos:
                    return total
        finally:
            self._kernel_min = 0
            view.release()

    def _send(self, out: int) -> int:
        """The current file's data into ``out`` by ``sendfile``; the bytes sent."""
        fd, off, size = self._fd, self._off, self._size
        start = off
        try:
            while off < size:
                try:
                    sent = os.sendfile(out, fd, off, min(size - off, 1 << 30))
                except BlockingIOError:
                    _wait_writable(out)
                    continue
                except OSError as exc:
                    if exc.errno not in _NO_SENDFILE or off > start:
                        raise
                    self._kernel_min = 0  # this output cannot: the buffer from now on
                    return 0
                if sent == 0:
                    self._off = off
                    self._shrank()
                off += sent
        finally:
            self._off = off
            self._kernel = False
        self._end_file()
        return off - start

    def _shrank(self) -> None:
        raise ArchiveError(f"{self._name}: a file shrank while being archived "
                           f"({self._off} of {self._size} bytes read)")

    def _end_file(self) -> None:
        fd, self._fd = self._fd, -1
        os.close(fd)
        pad = -self._size % BLOCK
        self._pending = END_OF_ARCHIVE[:pad] if pad else b""

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)
            self._members.close()  # queued files, then the walk's directory fds
        finally:
            callbacks, self._on_close = self._on_close, []
            try:
                for callback in reversed(callbacks):
                    callback()
            finally:
                super().close()


def _grow_pipe(out: int) -> None:
    """A pipe holds 64 KiB: writing a MiB at a time into it means a wait for the reader
    every 64 KiB, and on a busy machine each wait is a trip through the scheduler.
    Grow it to a MiB (the unprivileged limit), where we may."""
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(out).st_mode) and fcntl.fcntl(out, _F_GETPIPE_SZ) < _PIPE_SIZE:
            fcntl.fcntl(out, _F_SETPIPE_SZ, _PIPE_SIZE)


def _write_all(out: int, data: memoryview) -> None:
    while data:
        try:
            n = os.write(out, data)
        except BlockingIOError:  # an output left non-blocking by whoever opened it
            _wait_writable(out)
            continue
        data = data[n:]


def _wait_writable(out: int) -> None:
    import select  # an output left non-blocking is rare

    poll = select.poll()
    poll.register(out, select.POLLOUT)
    poll.poll()


class TarStream(io.BufferedReader):
    """What :func:`tar_stream` returns: a buffered reader over :class:`TarReader` that
    can also write itself into a file descriptor (:meth:`write_into`)."""

    raw: TarReader

    def write_into(self, out: int, on_bytes: Callable[[int], object] | None = None) -> int:
        """Write the rest of the stream into ``out``; see :meth:`TarReader.write_into`.
        Bytes already read into this reader's buffer go first."""
        total = self.raw.tell() - self.tell()  # read from the raw stream, not yet from us
        if total:
            _write_all(out, memoryview(self.read(total)))
            if on_bytes is not None:
                on_bytes(total)
        return total + self.raw.write_into(out, on_bytes)


def write_stream(stream: IO[bytes], out: int,
                 on_bytes: Callable[[int], object] | None = None) -> int:
    """Write ``stream`` (from its position to its end) into the file descriptor ``out``;
    return the number of bytes. A layer's diff (:class:`TarStream`) writes itself, file
    data by ``sendfile``; any other stream is copied through one reused buffer."""
    write_into = getattr(stream, "write_into", None)
    if write_into is not None:
        written: int = write_into(out, on_bytes)
        return written
    total = 0
    buf = bytearray(_WRITE_BUFFER)
    with memoryview(buf) as view:
        readinto = getattr(stream, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(view)
            else:
                chunk = stream.read(len(buf))
                n = len(chunk)
                view[:n] = chunk
            if not n:
                return total
            _write_all(out, view[:n])
            total += n
            if on_bytes is not None:
                on_bytes(n)


def tar_stream(members: Iterator[Member], *, name: str,
               on_close: list[Callable[[], None]] | None = None) -> TarStream:
    """A binary file object reading the tar of ``members``, then the end-of-archive blocks.

    ``on_close`` callbacks run once, last first, when the stream is closed (or collected).
    """
    return TarStream(TarReader(ReadAhead(members), name, list(on_close or ())),
                     buffer_size=1 << 16)
