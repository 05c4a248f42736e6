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

Extended headers as Go's ``archive/tar`` reads them (Docker's ``pkg/archive``): each
``x``, ``g``, ``L`` or ``K`` record holds at most 1 MiB (more is an ArchiveError, not
memory); a later ``x`` replaces a pending one (never merged: a chain of them costs one
header's memory); a PAX global header (``g``) is checked and then ignored — it changes no
member and drops what was pending before it (Go returns it as an entry of its own, which
Docker skips).

Strictness (Go's ``archive/tar``, which Docker uses): a bad checksum, a bad number, a
stream that ends inside a header or inside data, or one that ends without the
end-of-archive zero block raises :class:`aufs.archive.ArchiveError`. An empty stream is
an empty archive. After the end block the rest of the stream is read and ignored, so
that a compressed stream is checked to its end.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from aufs.archive import tarheader as h
from aufs.errors import ArchiveError

__all__ = ["BLK", "CHR", "DIR", "FIFO", "LNK", "REG", "SYM", "Member", "TarReader"]

BLOCK = 512
# name, mode, uid, gid, size, mtime, chksum, type, linkname, magic, version, uname, gname,
# devmajor, devminor, prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sB100s6s2s32s32s8s8s155s")
_ZERO = bytes(BLOCK)
_MAX_META = 1 << 20  # one PAX or GNU long-name record (Go: maxSpecialFileSize)
_DIRECT_MIN = 128 << 10  # data left in a file source rather than read (TarReader.take)

# Member kinds.
REG = 0
LNK = 1
SYM = 2
CHR = 3
BLK = 4
DIR = 5
FIFO = 6
_KINDS = {ord("0"): REG, 0: REG, ord("7"): REG, ord("1"): LNK, ord("2"): SYM,
          ord("3"): CHR, ord("4"): BLK, ord("5"): DIR, ord("6"): FIFO, ord("D"): DIR}
_T_PAX, _T_GLOBAL, _T_LONGNAME, _T_LONGLINK = ord("x"), ord("g"), ord("L"), ord("K")
_T_AREG, _T_DUMPDIR, _T_REG = 0, ord("D"), ord("0")
_IDS_KEPT = 256  # raw (mode, uid, gid) fields remembered with their values
_META_TYPES = {_T_PAX: "PAX header", _T_GLOBAL: "PAX global header",
               _T_LONGNAME: "GNU long name", _T_LONGLINK: "GNU long link name"}
_REFUSED = {ord("S"): "a GNU sparse file", ord("M"): "a multi-volume continuation",
            ord("N"): "an old GNU long-name record", ord("V"): "a volume label"}


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
        self.done = False
        self.members = 0        # members given out so far
        self._ids: dict[bytes, tuple[int, int, int]] = {}  # see _plain_file

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

    def take(self, n: int) -> tuple[list[memoryview], int, int]:
        """The next ``n`` bytes of the current member's data: ``(views, offset, length)``.

        The views hold what is read (no copy). If the source is a file and at least
        ``_DIRECT_MIN`` bytes are not read yet, those last ``length`` bytes are skipped
        unread and stay at ``offset`` of the file (``copy_file_range`` moves them without
        passing through this process); else ``length`` is 0.
        """
        if n > self._left:
            raise ValueError("read past the member's data")
        pos = self._pos
        avail = len(self._buf) - pos
        if n <= avail:  # all in the buffer: the usual case
            self._pos = pos + n
            self._left -= n
            return [memoryview(self._buf)[pos:pos + n]], -1, 0
        rest = n - avail
        if self._source_skip is None or rest < _DIRECT_MIN:
            return self.views(n), -1, 0
        views = [memoryview(self._buf)[self._pos:]] if avail else []
        self._pos = len(self._buf)
        offset = self._source_skip(rest)
        self._base += rest
        self._left -= n
        return views, offset, rest

    def drop(self, n: int) -> None:
        """Pass over the next ``n`` bytes of the current member's data (another process
        reads them from the file)."""
        if n > self._left:
            raise ValueError("read past the member's data")
        self._left -= n
        if n <= len(self._buf) - self._pos:
            self._pos += n
        else:
            self._skip(n)

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

    def _data(self, size: int, what: str) -> bytes:
        """The whole data of a metadata record (PAX, long name), padding skipped."""
        if size > _MAX_META:
            raise ArchiveError(f"{what} of {size} bytes at byte {self.offset}: too large "
                               f"(at most {_MAX_META} bytes, as Go's archive/tar reads)")
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
        buf, pos = self._buf, self._pos
        rest = self._left + self._pad
        if rest:
            self._left = self._pad = 0
            if pos + rest <= len(buf):
                pos += rest
            else:
                self._pos = pos
                self._skip(rest)
                buf, pos = self._buf, self._pos
        pax: dict[bytes, bytes] | None = None
        longname: bytes | None = None
        longlink: bytes | None = None
        first = True
        while True:
            # A header; in the buffer almost always (the slow path reads on).
            offset = self._base + pos
            if pos + BLOCK <= len(buf):
                block = buf[pos:pos + BLOCK]
                pos += BLOCK
            else:
                self._pos = pos
                maybe = self._take(BLOCK)
                buf, pos = self._buf, self._pos
                if maybe is None:
                    if first and offset == 0:
                        self._end()
                        return None  # an empty stream: an empty archive
                    raise ArchiveError(f"truncated tar stream (it ends at byte {offset}, "
                                       "where a header or the end-of-archive block belongs)")
                block = maybe
            if block == _ZERO:
                self._pos = pos
                self._zero_block(offset, first)
                return None
            first = False
            h.check_sum(block, offset)
            type_ = block[156]
            f_size = block[124:136]
            try:
                if f_size[11] not in (0, 32):
                    raise ValueError
                size = int(f_size[:11], 8)
            except ValueError:
                size = h.number(f_size, "size", offset)
            if size < 0:
                raise ArchiveError(f"negative size in the tar header at byte {offset}")
            if type_ in _META_TYPES:
                padded = size + (-size % BLOCK)
                if size <= _MAX_META and pos + padded <= len(buf):
                    data = buf[pos:pos + size]
                    pos += padded
                else:
                    self._pos = pos
                    data = self._data(size, _META_TYPES[type_])
                    buf, pos = self._buf, self._pos
                if type_ == _T_PAX:
                    pax = h.parse_pax(data)  # replaces a pending one, as Go does
                elif type_ == _T_GLOBAL:
                    h.parse_pax(data)  # checked, then ignored (Docker skips it)
                    pax = longname = longlink = None
                    first = True  # an entry of its own: the end block may follow
                elif type_ == _T_LONGNAME:
                    longname = h.cstr(data)
                else:
                    longlink = h.cstr(data)
                continue
            self._pos = pos
            self.members += 1
            return self._member(block, type_, size, offset, pax, longname, longlink)

    def _zero_block(self, offset: int, first: bool) -> None:
        """A zero block: the end of the archive if a second one (or the end of the stream)
        follows."""
        if not first:
            raise ArchiveError(f"end-of-archive block at byte {offset} right after an "
                               "extended header")
        second = self._take(BLOCK)
        if second is not None and second != _ZERO:
            raise ArchiveError(f"a lone zero block at byte {offset} inside the archive")
        self._end()

    def _member(self, block: bytes, type_: int, size: int, offset: int,
                pax: dict[bytes, bytes] | None, longname: bytes | None,
                longlink: bytes | None) -> Member:
        if type_ == _T_REG and block[157] == 0 and (
                pax is None and longname is None and longlink is None):
            plain = self._plain_file(block, size, offset)
            if plain is not None:
                return plain
        kind = _KINDS.get(type_)
        if kind is None:
            what = _REFUSED.get(type_, f"an entry of unknown type {chr(type_)!r}")
            raise ArchiveError(f"tar header at byte {offset}: {what} is not supported")
        (raw_name, f_mode, f_uid, f_gid, _, f_mtime, _, _, raw_link, magic, _, _, _,
         f_major, f_minor, prefix) = _HEADER.unpack_from(block)
        if longname is not None:
            raw_name = longname
        else:
            end = raw_name.find(0)
            if end >= 0:
                raw_name = raw_name[:end]
            if magic == b"ustar\x00" and prefix[0]:
                raw_name = h.cstr(prefix) + b"/" + raw_name
        if longlink is not None:
            raw_link = longlink
        elif raw_link[0]:
            end = raw_link.find(0)
            if end >= 0:
                raw_link = raw_link[:end]
        else:
            raw_link = b""
        try:
            if not (f_mode[7] in (0, 32) and f_uid[7] in (0, 32) and f_gid[7] in (0, 32)
                    and f_mtime[11] in (0, 32)):
                raise ValueError
            mode = int(f_mode[:7], 8) & 0o7777
            uid = int(f_uid[:7], 8)
            gid = int(f_gid[:7], 8)
            mtime_ns = int(f_mtime[:11], 8) * 1_000_000_000
        except ValueError:
            mode = h.number(f_mode, "mode", offset) & 0o7777
            uid = h.number(f_uid, "uid", offset)
            gid = h.number(f_gid, "gid", offset)
            mtime_ns = h.number(f_mtime, "mtime", offset) * 1_000_000_000
        atime_ns: int | None = None
        devmajor = devminor = 0
        if kind in (CHR, BLK):
            devmajor = h.number(f_major, "devmajor", offset)
            devminor = h.number(f_minor, "devminor", offset)
        xattrs: list[tuple[str, bytes]] | None = None
        if pax:
            extras = False
            for key, value in pax.items():
                if key == b"mtime":
                    mtime_ns = h.pax_time(value, "mtime")
                elif key == b"atime":
                    atime_ns = h.pax_time(value, "atime")
                elif key == b"path":
                    raw_name = value
                elif key == b"linkpath":
                    raw_link = value
                elif key == b"size":
                    size = h.pax_int(value, "size")
                elif key == b"uid":
                    uid = h.pax_int(value, "uid")
                elif key == b"gid":
                    gid = h.pax_int(value, "gid")
                elif key == b"SCHILY.devmajor":
                    if kind in (CHR, BLK):
                        devmajor = h.pax_int(value, "devmajor")
                elif key == b"SCHILY.devminor":
                    if kind in (CHR, BLK):
                        devminor = h.pax_int(value, "devminor")
                elif key not in h.PAX_PLAIN:
                    extras = True
            if extras:
                xattrs = h.pax_extras(pax, offset)
        if uid < 0 or gid < 0:
            raise ArchiveError(f"negative owner in the tar header at byte {offset}")
        name = h.decode(raw_name)
        if type_ == _T_AREG and name.endswith("/"):
            kind = DIR  # old tars mark directories by a trailing slash only
        if kind == REG or type_ == _T_DUMPDIR:
            self._left, self._pad = size, -size % BLOCK
        # Header-only types carry no data (as Go's archive/tar reads them).
        return Member(name, kind, mode, uid, gid, size if kind == REG else 0, mtime_ns,
                      atime_ns, h.decode(raw_link) if raw_link else "", devmajor, devminor,
                      xattrs, offset)

    def _plain_file(self, block: bytes, size: int, offset: int) -> Member | None:
        """The usual member, fast: a regular file ("0") of a header alone, no link
        name, octal numbers; the same Member as the general path gives, or None (then
        it decides). Mode, owner and group are looked up by their raw bytes: a layer
        has few combinations."""
        ids = self._ids.get(block[100:124])
        if ids is None:
            f_mode, f_uid, f_gid = block[100:108], block[108:116], block[116:124]
            if not (f_mode[7] in (0, 32) and f_uid[7] in (0, 32) and f_gid[7] in (0, 32)):
                return None
            try:
                ids = int(f_mode[:7], 8) & 0o7777, int(f_uid[:7], 8), int(f_gid[:7], 8)
            except ValueError:
                return None
            if ids[1] < 0 or ids[2] < 0:
                return None
            if len(self._ids) >= _IDS_KEPT:
                self._ids.clear()
            self._ids[block[100:124]] = ids
        f_mtime = block[136:148]
        if f_mtime[11] not in (0, 32):
            return None
        try:
            mtime_ns = int(f_mtime[:11], 8) * 1_000_000_000
        except ValueError:
            return None
        end = block.find(0, 0, 100)
        raw_name = block[:100] if end < 0 else block[:end]
        if block[345] and block[257:263] == b"ustar\x00":
            raw_name = h.cstr(block[345:500]) + b"/" + raw_name
        self._left, self._pad = size, -size % BLOCK
        mode, uid, gid = ids
        return Member(raw_name.decode("utf-8", "surrogateescape"), REG, mode, uid, gid, size,
                      mtime_ns, None, "", 0, 0, None, offset)

    def _end(self) -> None:
        """The end-of-archive block was read: drain the rest (a compressed stream is
        then checked to its end)."""
        self.done = True
        self._left = self._pad = 0
        self._buf, self._pos = b"", 0
        while self._read():
            pass
