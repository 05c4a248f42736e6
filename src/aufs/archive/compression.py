"""Layer tar compression: detect it from the first bytes, decompress as a stream.

Docker's ``DetectCompression``: the magic numbers of gzip, bzip2, xz and zstd; anything
else is an uncompressed tar. :func:`open_decompressed` wraps a binary stream in a reader
that yields the tar bytes with bounded memory. A malformed or truncated compressed
stream raises :class:`aufs.archive.ArchiveError` from ``read``.
"""

from __future__ import annotations

import bz2
import enum
import io
import lzma
import zlib
from typing import IO, Protocol

from aufs.archive import ArchiveError

__all__ = ["MAGIC_LEN", "Compression", "detect", "open_decompressed"]


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
_CHUNK = 1 << 20


def detect(head: bytes) -> Compression:
    """The compression of a stream starting with ``head`` (pure)."""
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            return kind
    return Compression.NONE


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


class _StdlibReader(io.RawIOBase):
    """Streaming decompression of concatenated members (gzip, bzip2, xz)."""

    def __init__(self, raw: IO[bytes], head: bytes, kind: Compression) -> None:
        self._raw = raw
        self._kind = kind
        self._in = head
        self._zlib = kind is Compression.GZIP
        self._dec: _Decompressor = self._new()
        self._done = False

    def _new(self) -> _Decompressor:
        if self._kind is Compression.GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self._kind is Compression.BZIP2:
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        n = len(buffer)
        while not self._done:
            data = self._next(n)
            if data:
                buffer[: len(data)] = data
                return len(data)
        return 0

    def _next_member(self) -> None:
        rest = self._dec.unused_data + self._in
        self._in = b""
        while True:
            rest = rest.lstrip(b"\0")  # padding after the last member
            if rest:
                break
            rest = self._raw.read(_CHUNK)
            if not rest:
                self._done = True
                return
        self._dec = self._new()
        self._in = rest

    def _next(self, n: int) -> bytes:
        if self._dec.eof:
            self._next_member()
            if self._done:
                return b""
        dec = self._dec
        needs_input = not self._in and (self._zlib or getattr(dec, "needs_input", True))
        if needs_input:
            self._in = self._raw.read(_CHUNK)
            if not self._in:
                raise ArchiveError(f"truncated {self._kind.value} stream")
        try:
            out = dec.decompress(self._in, n)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise ArchiveError(f"malformed {self._kind.value} stream: {exc}") from exc
        # At the end of a member the rest of the input is in ``unused_data`` (zlib also
        # leaves it in ``unconsumed_tail``); bz2 and lzma buffer input themselves.
        tail: bytes = dec.unconsumed_tail if self._zlib else b""  # type: ignore[attr-defined]
        self._in = b"" if dec.eof else tail
        return out


class _ZstdReader(io.RawIOBase):
    """Streaming zstd of concatenated frames; a frame cut short raises ArchiveError.

    ``zstandard``'s own ``stream_reader`` returns EOF silently on a truncated frame, so
    frames are fed to a ``decompressobj`` in small pieces (which also bounds the output
    one call can produce).
    """

    def __init__(self, raw: IO[bytes], head: bytes) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._in = head
        self._dec = zstandard.ZstdDecompressor().decompressobj()
        self._fed = bool(head)
        self._out = b""
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while self._pos >= len(self._out):
            if self._done:
                return 0
            self._out, self._pos = self._fill(), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> bytes:
        if self._dec.eof:
            rest = self._dec.unused_data + self._in
            self._dec = self._zstd.ZstdDecompressor().decompressobj()
            self._in = rest
            self._fed = False
        if not self._in:
            self._in = self._raw.read(_CHUNK)
            if not self._in:
                self._done = True
                if self._fed and not self._dec.eof:
                    raise ArchiveError("truncated zstd stream")
                return b""
        piece, self._in = self._in[:_ZSTD_PIECE], self._in[_ZSTD_PIECE:]
        self._fed = True
        try:
            out: bytes = self._dec.decompress(piece)
        except self._zstd.ZstdError as exc:
            raise ArchiveError(f"malformed zstd stream: {exc}") from exc
        return out


_ZSTD_PIECE = 8192


class _Prefixed(io.RawIOBase):
    """``head`` (already read from ``raw``) followed by the rest of ``raw``."""

    def __init__(self, raw: IO[bytes], head: bytes) -> None:
        self._raw = raw
        self._head = head

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                data, self._head = self._head, b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._raw.read(size)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_head(raw: IO[bytes]) -> bytes:
    head = b""
    while len(head) < MAGIC_LEN:
        chunk = raw.read(MAGIC_LEN - len(head))
        if not chunk:
            break
        head += chunk
    return head


def open_decompressed(raw: IO[bytes]) -> tuple[Compression, IO[bytes]]:
    """Detect the compression of ``raw`` and return it with a reader of the tar bytes."""
    head = _read_head(raw)
    kind = detect(head)
    reader: io.RawIOBase
    if kind is Compression.NONE:
        reader = _Prefixed(raw, head)
    elif kind is Compression.ZSTD:
        reader = _ZstdReader(raw, head)
    else:
        reader = _StdlibReader(raw, head, kind)
    return kind, io.BufferedReader(reader, _CHUNK)
