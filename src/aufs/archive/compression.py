"""Layer tar compression: detect it from the first bytes, decompress as a stream.

Docker's ``DetectCompression``: the magic numbers of gzip, bzip2, xz and zstd; anything
else is an uncompressed tar. :func:`open_chunks` turns a binary stream into a source of
tar bytes in chunks of bounded size (a decompression bomb never becomes one big
allocation); compressed streams are decoded by a background thread (zlib, bz2, lzma and
libzstd all release the GIL), so decompression runs beside extraction, as ``gzip -d``
does beside GNU tar. Concatenated members / frames are read as one stream. A malformed
or truncated compressed stream raises :class:`aufs.archive.ArchiveError` from ``read``.
"""

from __future__ import annotations

import bz2
import contextlib
import enum
import io
import lzma
import os
import queue
import stat
import threading
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import IO, Protocol

from aufs._sys import zstd as libzstd
from aufs.errors import ArchiveError

__all__ = ["CHUNK", "MAGIC_LEN", "Chunks", "Compression", "detect", "open_chunks",
           "open_decompressed"]


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    ZSTD = "zstd"


_MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b\x08", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
)
MAGIC_LEN = max(len(m) for m, _ in _MAGICS)
CHUNK = 1 << 20      # bytes read from the stream at a time, and most a chunk decodes to
_AHEAD = 128 << 20   # how far ahead of the reader a tar file is read by the kernel
_QUEUE_CHUNKS = 8    # decoded chunks a decoder thread may run ahead
_ZSTD_PIECE = 256    # input per call of the fallback decoder (bounds its output)


def detect(head: bytes) -> Compression:
    """The compression of a stream starting with ``head`` (pure)."""
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    return Compression.NONE


class Chunks(Protocol):
    """A source of tar bytes: ``read()`` returns the next chunk, ``b""`` at the end.

    ``skip``, where not None (an uncompressed regular file), passes over ``n`` bytes
    without reading them and returns their offset in the file ``fd`` (for
    ``copy_file_range``); ArchiveError if fewer are left."""

    skip: Callable[[int], int] | None
    fd: int
    origin: int  # offset in the file ``fd`` of the stream's first byte

    def read(self) -> bytes: ...

    def close(self) -> None: ...


def _read_head(raw: IO[bytes]) -> bytes:
    head = b""
    while len(head) < MAGIC_LEN:
        chunk = raw.read(MAGIC_LEN - len(head))
        if not chunk:
            break
        head += chunk
    return head


def open_chunks(raw: IO[bytes], *, threaded: bool = True) -> tuple[Compression, Chunks]:
    """Detect the compression of ``raw`` and return it with a source of its tar bytes.

    ``threaded``: decode compressed streams in a background thread. Close the source
    when done (it stops that thread)."""
    source = _FileSource.open(raw)
    if source is not None:
        head = source.peek(MAGIC_LEN)
        kind = detect(head)
        if kind is Compression.NONE:
            return kind, source
        source.close()
    head = _read_head(raw)
    kind = detect(head)
    if kind is Compression.NONE:
        return kind, _Plain(raw, head)
    decoded = _decoder(kind, lambda: raw.read(CHUNK), head)
    return kind, (_Prefetched(decoded, kind) if threaded else _Inline(decoded))


def _decoder(kind: Compression, read: Callable[[], bytes], head: bytes) -> Iterator[bytes]:
    if kind is Compression.ZSTD:
        if libzstd.available():
            return _zstd_chunks(read, head)
        return _zstd_fallback(read, head)
    return _stdlib_chunks(kind, read, head)


class _FileSource:
    """An uncompressed tar in a regular file, read with ``pread`` from the stream's
    position; on close the stream is left just after what was consumed."""

    def __init__(self, raw: IO[bytes], fd: int, start: int, size: int) -> None:
        self._raw = raw
        self.fd = fd
        self.origin = start
        self._pos = start
        self._size = size
        self._advised = start
        self.skip: Callable[[int], int] | None = self._skip

    @classmethod
    def open(cls, raw: IO[bytes]) -> _FileSource | None:
        try:
            fd = raw.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not raw.seekable():
                return None
            return cls(raw, fd, raw.tell(), st.st_size)
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            return None

    def peek(self, n: int) -> bytes:
        return os.pread(self.fd, n, self._pos)

    def _advise(self) -> None:
        """Ask the kernel to read ahead of us (the file may be cold): extraction then
        overlaps the disk instead of waiting for it."""
        if self._pos + _AHEAD // 2 > self._advised < self._size:
            start = max(self._advised, self._pos)
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, start, _AHEAD, os.POSIX_FADV_WILLNEED)
            self._advised = start + _AHEAD

    def read(self) -> bytes:
        self._advise()
        data = os.pread(self.fd, CHUNK, self._pos)
        self._pos += len(data)
        return data

    def _skip(self, n: int) -> int:
        if self._pos + n > self._size:
            raise ArchiveError(f"truncated tar stream (it ends at byte {self._size} of "
                               "the file, inside a member's data)")
        offset = self._pos
        self._pos += n
        self._advise()
        return offset

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._raw.seek(self._pos)


class _Plain:
    skip: Callable[[int], int] | None = None
    fd: int = -1
    origin: int = 0

    def __init__(self, raw: IO[bytes], head: bytes) -> None:
        self._raw = raw
        self._head = head

    def read(self) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head + self._raw.read(CHUNK - len(head))
        return self._raw.read(CHUNK)

    def close(self) -> None:
        pass


class _Inline:
    skip: Callable[[int], int] | None = None
    fd: int = -1
    origin: int = 0

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            return b""

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


_END = object()


class _Prefetched:
    """Chunks decoded ahead by a daemon thread, through a small bounded queue."""

    skip: Callable[[int], int] | None = None
    fd: int = -1
    origin: int = 0

    def __init__(self, chunks: Iterator[bytes], kind: Compression) -> None:
        self._queue: queue.Queue[object] = queue.Queue(_QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(chunks,), daemon=True,
                                        name=f"aufs-{kind.value}-decoder")
        self._thread.start()

    def _run(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(self) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, bytes):
            return item
        self._done = True
        if isinstance(item, BaseException):
            raise item
        return b""

    def close(self) -> None:
        self._stop.set()
        self._done = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()


# -- decoders ------------------------------------------------------------------------------

class _Stdlib(Protocol):
    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


_STDLIB_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


def _new_stdlib(kind: Compression) -> _Stdlib:
    if kind is Compression.GZIP:
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind is Compression.BZIP2:
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


def _stdlib_chunks(kind: Compression, read: Callable[[], bytes], data: bytes
                   ) -> Iterator[bytes]:
    """gzip, bzip2 or xz members one after the other (NUL padding between them allowed),
    each piece of output at most CHUNK bytes."""
    try:
        while True:
            while True:  # the start of the next member, past any padding
                data = data.lstrip(b"\0")
                if data:
                    break
                data = read()
                if not data:
                    return
            data = yield from _stdlib_member(kind, read, data)
    except _STDLIB_ERRORS as exc:
        raise ArchiveError(f"malformed {kind.value} stream: {exc}") from exc


def _stdlib_member(kind: Compression, read: Callable[[], bytes], feed: bytes
                   ) -> Generator[bytes, None, bytes]:
    """One member; returns the input that follows it."""
    dec = _new_stdlib(kind)
    is_zlib = kind is Compression.GZIP
    while True:
        out = dec.decompress(feed, CHUNK)
        # zlib keeps input beyond the output limit in ``unconsumed_tail``; bz2 and lzma
        # buffer it themselves and say ``needs_input`` when they want more.
        feed = dec.unconsumed_tail if is_zlib else b""  # type: ignore[attr-defined]
        if out:
            yield out
        if dec.eof:
            return dec.unused_data
        if is_zlib:
            if feed or out:
                continue
        elif not dec.needs_input:  # type: ignore[attr-defined]
            continue
        feed = read()
        if not feed:
            raise ArchiveError(f"truncated {kind.value} stream")


def _zstd_chunks(read: Callable[[], bytes], head: bytes) -> Iterator[bytes]:
    try:
        yield from libzstd.decompress_stream(read, head, CHUNK)
    except libzstd.ZstdError as exc:
        raise ArchiveError(str(exc)) from exc


def _zstd_fallback(read: Callable[[], bytes], data: bytes) -> Iterator[bytes]:
    """The ``zstandard`` package, for hosts without libzstd. Its ``decompressobj`` has
    no output limit, so input goes in small pieces (which bounds the output of one
    call); its frames end in ``eof``, a frame cut short raises."""
    import zstandard

    dec = zstandard.ZstdDecompressor().decompressobj()
    fed = False
    while True:
        if dec.eof:
            data = dec.unused_data + data  # the next frame, or NUL padding (bsdtar)
            dec = zstandard.ZstdDecompressor().decompressobj()
            fed = False
        if not fed:
            data = data.lstrip(b"\0")
        if not data:
            data = read()
            if not data:
                break
            continue
        piece, data = data[:_ZSTD_PIECE], data[_ZSTD_PIECE:]
        fed = True
        try:
            out: bytes = dec.decompress(piece)
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"malformed zstd stream: {exc}") from exc
        for i in range(0, len(out), CHUNK):  # one call makes at most ~8 MiB (256 B in)
            yield out[i:i + CHUNK]
    if fed and not dec.eof:
        raise ArchiveError("truncated zstd stream")


class _ChunkReader(io.RawIOBase):
    """A file-like view of a chunk source (for callers that want ``read(n)``)."""

    def __init__(self, chunks: Chunks) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while self._pos >= len(self._buf):
            self._buf, self._pos = self._chunks.read(), 0
            if not self._buf:
                return 0
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._chunks.close()
        super().close()


def open_decompressed(raw: IO[bytes]) -> tuple[Compression, IO[bytes]]:
    """Detect the compression of ``raw`` and return it with a reader of the tar bytes."""
    kind, chunks = open_chunks(raw, threaded=False)
    return kind, io.BufferedReader(_ChunkReader(chunks), CHUNK)
