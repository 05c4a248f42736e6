"""A streaming reader of layer tars: ustar, GNU and PAX headers, strict about the end.

Made for :mod:`aufs.archive.apply`: one pass over a source of byte chunks, constant
memory, no object per member beyond a small :class:`Member`. File data is handed out as
views of the chunks the source produced (immutable ``bytes``), so nothing is copied on
the way to ``write(2)`` and a view may be passed to another thread.

Formats: POSIX ustar (with the ``prefix`` field), GNU (``L``/``K`` long names, base-256
numbers, ``D`` dump directories), PAX (``x`` per file, ``g`` global; ``path``,
``linkpath``, ``size``, ``uid``, ``gid``, ``mtime``, ``atime``, ``SCHILY.xattr.*``,
``LIBARCHIVE.xattr.*``, ``SCHILY.devmajor/devminor``) and old v7 headers. Sparse files
(GNU ``S``, ``GNU.sparse.*``) and multi-volume archives are refused.

Strictness (Go's ``archive/tar``, which Docker uses): a bad checksum, a bad number, a
stream that ends inside a header or inside data, or one that ends without the
end-of-archive zero block raises :class:`aufs.archive.ArchiveError`. An empty stream is
an empty archive. After the end block the rest of the stream is read and ignored, so
that a compressed stream is checked to its end.
"""

from __future__ import annotations

import base64
import urllib.parse
import zlib
from collections.abc import Callable

from aufs.archive import ArchiveError

__all__ = ["BLK", "CHR", "DIR", "FIFO", "LNK", "REG", "SYM", "Member", "TarReader"]

BLOCK = 512
_ZERO = bytes(BLOCK)
_MAX_META = 16 << 20  # PAX or GNU long-name data held in memory
_DIRECT_MIN = 128 << 10  # data left in a file source rather than read (TarReader.take)

# Member kinds.
REG, LNK, SYM, CHR, BLK, DIR, FIFO = range(7)
_KINDS = {ord("0"): REG, 0: REG, ord("7"): REG, ord("1"): LNK, ord("2"): SYM,
          ord("3"): CHR, ord("4"): BLK, ord("5"): DIR, ord("6"): FIFO, ord("D"): DIR}
_T_PAX, _T_GLOBAL, _T_LONGNAME, _T_LONGLINK = ord("x"), ord("g"), ord("L"), ord("K")
_T_AREG, _T_DUMPDIR = 0, ord("D")
_REFUSED = {ord("S"): "a GNU sparse file", ord("M"): "a multi-volume continuation",
            ord("N"): "an old GNU long-name record", ord("V"): "a volume label"}
_XATTR = "SCHILY.xattr."
_LA_XATTR = "LIBARCHIVE.xattr."


class Member:
    """One archive entry, names decoded as the filesystem does (UTF-8, surrogateescape:
    any byte string round-trips to the same bytes)."""

    __slots__ = ("atime_ns", "devmajor", "devminor", "gid", "kind", "linkname", "mode",
                 "mtime_ns", "name", "offset", "size", "uid", "xattrs")

    def __init__(self, name: str, kind: int, mode: int, uid: int, gid: int, size: int,
                 mtime_ns: int, atime_ns: int | None, linkname: str, devmajor: int,
                 devminor: int, xattrs: list[tuple[str, bytes]] | None, offset: int) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.atime_ns = atime_ns
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs
        self.offset = offset

    def __repr__(self) -> str:
        return f"<Member {self.name!r} kind={self.kind} size={self.size}>"


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _number(field: bytes, what: str, offset: int) -> int:
    """An octal (NUL/space padded) or GNU base-256 header number."""
    try:  # the usual shape: digits (maybe space-padded), then one NUL or space
        return int(field[:-1], 8)
    except ValueError:
        pass
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big", signed=field[0] == 0xFF)
        return value if field[0] == 0xFF else value - (0x80 << (8 * (len(field) - 1)))
    text = _cstr(field).strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"bad {what} field {field!r} in the tar header at byte "
                           f"{offset}") from None


def _pax_time(value: bytes, key: str) -> int:
    """A PAX time ("1234.5678", maybe negative) in nanoseconds."""
    text = value.strip()
    negative = text.startswith(b"-")
    if negative:
        text = text[1:]
    sec, _, frac = text.partition(b".")
    if not sec.isdigit() or (frac and not frac.isdigit()):
        raise ArchiveError(f"bad PAX {key} {value!r}")
    ns = int(sec) * 1_000_000_000 + int((frac + b"000000000")[:9])
    return -ns if negative else ns


def _pax_int(value: bytes, key: str) -> int:
    if not value.isdigit():
        raise ArchiveError(f"bad PAX {key} {value!r}")
    return int(value)


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX extended header records ("<len> <key>=<value>\\n") as a dict (pure)."""
    out: dict[str, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 24)
        if space < 0 or not data[pos:space].isdigit():
            raise ArchiveError(f"malformed PAX record at {pos}: {data[pos:pos + 30]!r}")
        stop = pos + int(data[pos:space])
        if stop <= space + 1 or stop > end or data[stop - 1] != 0x0A:
            raise ArchiveError(f"malformed PAX record at {pos}: bad length")
        key, eq, value = data[space + 1:stop - 1].partition(b"=")
        if not eq:
            raise ArchiveError(f"malformed PAX record at {pos}: no '='")
        out[_decode(key)] = value
        pos = stop
    return out


class TarReader:
    """Read members from ``read``, a function returning the next chunk of the tar stream
    (``b""`` at its end)."""

    def __init__(self, read: Callable[[], bytes],
                 skip: Callable[[int], int] | None = None) -> None:
        self._read = read
        # A source that can pass over bytes unread (a file): skip(n) returns their offset
        # in the file, for ``copy_file_range``; fewer than n left raises ArchiveError.
        self._source_skip = skip
        self._buf = b""
        self._pos = 0
        self._base = 0          # stream offset of _buf[0]
        self._left = 0          # bytes of the current member's data not yet consumed
        self._pad = 0           # padding after it
        self._globals: dict[str, bytes] = {}
        self.done = False

    # -- the byte source --------------------------------------------------------------

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _more(self) -> bool:
        """Append the next chunk to what is left of the buffer; False at end of stream."""
        chunk = self._read()
        if not chunk:
            return False
        rest = len(self._buf) - self._pos
        self._base += self._pos
        self._buf = self._buf[self._pos:] + chunk if rest else chunk
        self._pos = 0
        return True

    def _take(self, n: int) -> bytes | None:
        """The next ``n`` bytes; None if the stream ends before the first of them."""
        while len(self._buf) - self._pos < n:
            if not self._more():
                if len(self._buf) == self._pos:
                    return None
                raise ArchiveError(f"truncated tar stream (it ends at byte "
                                   f"{self._base + len(self._buf)}, inside a header)")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _skip(self, n: int) -> None:
        if self._source_skip is not None and n - (len(self._buf) - self._pos) >= _DIRECT_MIN:
            rest = n - (len(self._buf) - self._pos)
            self._pos = len(self._buf)
            self._source_skip(rest)
            self._base += rest
            return
        while n:
            avail = len(self._buf) - self._pos
            if not avail and not self._more():
                raise ArchiveError(f"truncated tar stream (it ends at byte {self.offset}, "
                                   "inside a member's data)")
            step = min(n, len(self._buf) - self._pos)
            self._pos += step
            n -= step

    # -- member data ------------------------------------------------------------------

    @property
    def left(self) -> int:
        """Bytes of the current member's data not read yet."""
        return self._left

    def views(self, n: int) -> list[memoryview]:
        """The next ``n`` bytes of the current member's data, as views (no copy)."""
        if n > self._left:
            raise ValueError("read past the member's data")
        out: list[memoryview] = []
        self._left -= n
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._more():
                    raise ArchiveError(f"truncated tar stream (it ends at byte "
                                       f"{self.offset}, inside a member's data)")
                avail = len(self._buf)
            step = min(n, avail)
            out.append(memoryview(self._buf)[self._pos:self._pos + step])
            self._pos += step
            n -= step
        return out

    @property
    def direct(self) -> bool:
        """True if :meth:`take` may leave data in the source (a seekable file)."""
        return self._source_skip is not None

    def take(self, n: int) -> tuple[list[memoryview], int, int]:
        """The next ``n`` bytes of the current member's data: ``(views, offset, length)``.

        The views hold what is read (no copy). If the source is a file and at least
        ``_DIRECT_MIN`` bytes are not read yet, those last ``length`` bytes are skipped
        unread and stay at ``offset`` of the file (``copy_file_range`` moves them without
        passing through this process); else ``length`` is 0.
        """
        if n > self._left:
            raise ValueError("read past the member's data")
        avail = len(self._buf) - self._pos
        rest = n - avail
        if self._source_skip is None or rest < _DIRECT_MIN:
            return self.views(n), -1, 0
        views = [memoryview(self._buf)[self._pos:]] if avail else []
        self._pos = len(self._buf)
        offset = self._source_skip(rest)
        self._base += rest
        self._left -= n
        return views, offset, rest

    def chunk(self, limit: int) -> memoryview:
        """Up to ``limit`` (> 0) next bytes of the current member's data (at least one)."""
        if not self._left:
            return memoryview(b"")
        avail = len(self._buf) - self._pos
        if not avail:
            if not self._more():
                raise ArchiveError(f"truncated tar stream (it ends at byte {self.offset}, "
                                   "inside a member's data)")
            avail = len(self._buf)
        step = min(limit, avail, self._left)
        view = memoryview(self._buf)[self._pos:self._pos + step]
        self._pos += step
        self._left -= step
        return view

    def _finish_member(self) -> None:
        if self._left or self._pad:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0

    def _data(self, size: int, what: str) -> bytes:
        """The whole data of a metadata record (PAX, long name), padding skipped."""
        if size > _MAX_META:
            raise ArchiveError(f"{what} of {size} bytes at byte {self.offset}: too large")
        data = self._take(size) if size else b""
        if data is None:
            raise ArchiveError(f"truncated tar stream (it ends inside a {what})")
        self._skip(-size % BLOCK)
        return data

    # -- headers ----------------------------------------------------------------------

    def next(self) -> Member | None:
        """The next member (its data unread), or None at the end of the archive."""
        if self.done:
            return None
        self._finish_member()
        pax: dict[str, bytes] | None = None
        longname: bytes | None = None
        longlink: bytes | None = None
        first = True
        while True:
            offset = self.offset
            block = self._take(BLOCK)
            if block is None:
                if first and offset == 0:
                    self._end()
                    return None  # an empty stream: an empty archive
                raise ArchiveError(f"truncated tar stream (it ends at byte {offset}, "
                                   "where a header or the end-of-archive block belongs)")
            if block == _ZERO:
                if not first:
                    raise ArchiveError(f"end-of-archive block at byte {offset} right "
                                       "after an extended header")
                second = self._take(BLOCK)
                if second is not None and second != _ZERO:
                    raise ArchiveError(f"a lone zero block at byte {offset} inside the "
                                       "archive")
                self._end()
                return None
            first = False
            _check_sum(block, offset)
            type_ = block[156]
            size = _number(block[124:136], "size", offset)
            if size < 0:
                raise ArchiveError(f"negative size in the tar header at byte {offset}")
            if type_ in (_T_PAX, _T_GLOBAL):
                records = parse_pax(self._data(size, "PAX header"))
                if type_ == _T_GLOBAL:
                    for key, value in records.items():
                        if value:
                            self._globals[key] = value
                        else:
                            self._globals.pop(key, None)
                else:
                    pax = records if pax is None else {**pax, **records}
                continue
            if type_ == _T_LONGNAME:
                longname = _cstr(self._data(size, "GNU long name"))
                continue
            if type_ == _T_LONGLINK:
                longlink = _cstr(self._data(size, "GNU long link name"))
                continue
            return self._member(block, type_, size, offset, pax, longname, longlink)

    def _member(self, block: bytes, type_: int, size: int, offset: int,
                pax: dict[str, bytes] | None, longname: bytes | None,
                longlink: bytes | None) -> Member:
        kind = _KINDS.get(type_)
        if kind is None:
            what = _REFUSED.get(type_, f"an entry of unknown type {chr(type_)!r}")
            raise ArchiveError(f"tar header at byte {offset}: {what} is not supported")
        magic = block[257:263]
        if longname is not None:
            raw_name = longname
        else:
            raw_name = _cstr(block[0:100])
            if magic == b"ustar\x00":
                prefix = _cstr(block[345:500])
                if prefix:
                    raw_name = prefix + b"/" + raw_name
        raw_link = longlink if longlink is not None else _cstr(block[157:257])
        mode = _number(block[100:108], "mode", offset) & 0o7777
        uid = _number(block[108:116], "uid", offset)
        gid = _number(block[116:124], "gid", offset)
        mtime_ns = _number(block[136:148], "mtime", offset) * 1_000_000_000
        atime_ns: int | None = None
        devmajor = devminor = 0
        if kind in (CHR, BLK):
            devmajor = _number(block[329:337], "devmajor", offset)
            devminor = _number(block[337:345], "devminor", offset)
        xattrs: list[tuple[str, bytes]] | None = None
        if self._globals:
            pax = {**self._globals, **pax} if pax else dict(self._globals)
        if pax:
            name_v = pax.get("path")
            if name_v is not None:
                raw_name = name_v
            link_v = pax.get("linkpath")
            if link_v is not None:
                raw_link = link_v
            for key, value in pax.items():
                if key == "size":
                    size = _pax_int(value, key)
                elif key == "uid":
                    uid = _pax_int(value, key)
                elif key == "gid":
                    gid = _pax_int(value, key)
                elif key == "mtime":
                    mtime_ns = _pax_time(value, key)
                elif key == "atime":
                    atime_ns = _pax_time(value, key)
                elif key == "SCHILY.devmajor":
                    devmajor = _pax_int(value, key)
                elif key == "SCHILY.devminor":
                    devminor = _pax_int(value, key)
                elif key.startswith(_XATTR):
                    xattrs = xattrs or []
                    xattrs.append((key[len(_XATTR):], value))
                elif key.startswith("GNU.sparse."):
                    raise ArchiveError(f"tar header at byte {offset}: a GNU sparse file "
                                       "is not supported")
            if any(k.startswith(_LA_XATTR) for k in pax):
                xattrs = _libarchive_xattrs(pax, xattrs or [])
        name = _decode(raw_name)
        if type_ == _T_AREG and name.endswith("/"):
            kind = DIR  # old tars mark directories by a trailing slash only
        if kind == REG or type_ == _T_DUMPDIR:
            self._left, self._pad = size, -size % BLOCK
        # Header-only types carry no data (as Go's archive/tar reads them).
        return Member(name, kind, mode, uid, gid, size if kind == REG else 0, mtime_ns,
                      atime_ns, _decode(raw_link), devmajor, devminor, xattrs, offset)

    def _end(self) -> None:
        """The end-of-archive block was read: drain the rest (a compressed stream is
        then checked to its end)."""
        self.done = True
        self._left = self._pad = 0
        self._buf, self._pos = b"", 0
        while self._read():
            pass


_ADLER_MOD = 65521


def _check_sum(block: bytes, offset: int) -> None:
    """The header checksum: the sum of the header's bytes, its own field as spaces.

    Adler-32's low half is that sum (plus one) modulo 65521, computed in C; a 512-byte
    sum is below 2 * 65521, so the true sum is one of two values. (``sum(block)`` costs
    more than the rest of a header's parsing.) Old tars summed signed chars."""
    field = block[148:156]
    try:
        stored = int(_cstr(field).strip() or b"-1", 8)
    except ValueError:
        stored = -1
    low = ((zlib.adler32(block) & 0xFFFF) - 1) % _ADLER_MOD - sum(field) + 256
    if stored == low or stored == low + _ADLER_MOD:
        return
    unsigned = sum(block) - sum(field) + 256
    signed = unsigned - 256 * sum(1 for b in block if b & 0x80)
    signed += 256 * sum(1 for b in field if b & 0x80)
    if stored != signed:
        raise ArchiveError(f"bad tar header checksum at byte {offset} (not a tar stream, "
                           "or a corrupt one)")


def _libarchive_xattrs(pax: dict[str, bytes], xattrs: list[tuple[str, bytes]]
                       ) -> list[tuple[str, bytes]]:
    """bsdtar's ``LIBARCHIVE.xattr.<urlencoded name>=<base64 value>``, for names that
    have no ``SCHILY.xattr`` record."""
    have = {name for name, _ in xattrs}
    for key, value in pax.items():
        if not key.startswith(_LA_XATTR):
            continue
        name = urllib.parse.unquote(key[len(_LA_XATTR):], errors="surrogateescape")
        if name in have:
            continue
        try:
            xattrs.append((name, base64.b64decode(value + b"=" * (-len(value) % 4),
                                                  validate=True)))
        except ValueError:
            raise ArchiveError(f"bad PAX {key} value") from None
    return xattrs
