"""The tar header codec (writing side).

Headers are POSIX ustar; a PAX extended header (``x``) is added only when a field does
not fit: names or link targets over 100 bytes, ids, sizes or times out of octal range,
and extended attributes (``SCHILY.xattr.<name>``, the key GNU tar, bsdtar, Go and Python
all read). User and group names are left empty: ownership is numeric. Times are whole
seconds, as in Docker's layers (its ``sameFsTime`` rule exists for that reason).
"""

from __future__ import annotations

import stat
import struct

BLOCK = 512
REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
XHDTYPE = b"x"

_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_MAGIC = b"ustar\x00"
_VERSION = b"00"
_MAX_OCT7 = 0o7777777
_MAX_OCT11 = 0o77777777777
END_OF_ARCHIVE = bytes(2 * BLOCK)
_PAX_NAME = b"././@PaxHeader"
# Bytes of the fields that are the same in every header (magic, version), plus the
# checksum field counted as eight spaces, as the format requires.
_CONST_SUM = sum(_MAGIC) + sum(_VERSION) + 8 * 0x20
_OCT7_ZERO = b"0000000\x00"



def _oct7(value: int) -> bytes:
    return b"%07o\x00" % value


def _oct11(value: int) -> bytes:
    return b"%011o\x00" % value


def _base256(value: int, width: int) -> bytes:
    """GNU base-256 numeric field (for device numbers that do not fit in octal)."""
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"<len> key=value\\n"`` record; ``len`` counts the whole record, itself included."""
    payload = b" " + key + b"=" + value + b"\n"
    n = len(payload)
    total = n + len(str(n))
    if len(str(total)) > len(str(n)):
        total += 1
    return b"%d" % total + payload


def padding(size: int) -> int:
    """Bytes of zero padding after ``size`` bytes of member data."""
    return -size % BLOCK


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
           linkname: bytes, devmajor: bytes, devminor: bytes) -> bytes:
    mode_s = _oct7(mode)
    uid_s = _oct7(uid) if uid else _OCT7_ZERO
    gid_s = _oct7(gid) if gid else _OCT7_ZERO
    size_s = _oct11(size)
    mtime_s = _oct11(mtime)
    chksum = (_CONST_SUM + sum(name) + sum(mode_s) + sum(uid_s) + sum(gid_s) + sum(size_s)
              + sum(mtime_s) + typeflag[0] + sum(linkname) + sum(devmajor) + sum(devminor))
    return _USTAR.pack(name, mode_s, uid_s, gid_s, size_s, mtime_s, b"%06o\x00 " % chksum,
                       typeflag, linkname, _MAGIC, _VERSION, b"", b"", devmajor, devminor, b"")


# Everything after the link name in a header without devices: magic, version, empty
# uname/gname, zero devmajor/devminor, empty prefix, padding.
_TAIL = _MAGIC + _VERSION + bytes(64) + _OCT7_ZERO + _OCT7_ZERO + bytes(167)
_TAIL_SUM = sum(_TAIL) + 8 * 0x20
_NO_LINK = bytes(100)


_ids_cache: dict[tuple[int, int, int], tuple[bytes, int]] = {}


def _ids_field(mode: int, uid: int, gid: int) -> tuple[bytes, int]:
    """Mode, uid and gid fields with their byte sum (a layer has few distinct triples)."""
    key = (mode, uid, gid)
    hit = _ids_cache.get(key)
    if hit is None:
        if len(_ids_cache) > 4096:
            _ids_cache.clear()
        field = b"%07o\x00%07o\x00%07o\x00" % key
        hit = _ids_cache[key] = (field, sum(field))
    return hit


def simple_header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
                  typeflag: bytes) -> bytes:
    """The one-block header of the common member: a name of at most 100 bytes, no link
    target, no device, fields in octal range. The caller checks ``len(name) <= 100``."""
    if not (0 <= uid <= _MAX_OCT7 and 0 <= gid <= _MAX_OCT7 and size <= _MAX_OCT11
            and 0 <= mtime <= _MAX_OCT11):
        return header(name, mode, uid, gid, size, mtime, typeflag)
    ids, ids_sum = _ids_field(mode & 0o7777, uid, gid)
    times = b"%011o\x00%011o\x00" % (size, mtime)
    chksum = _TAIL_SUM + ids_sum + sum(name) + sum(times) + typeflag[0]
    return b"%s%s%s%06o\x00 %s%s%s" % (name.ljust(100, b"\x00"), ids, times, chksum, typeflag,
                                       _NO_LINK, _TAIL)


# name, mode+uid+gid, size+mtime, checksum, then a regular file's type, no link name and
# _TAIL: one pack_into writes a whole block (``s`` fields are zero-padded).
_SIMPLE = struct.Struct("100s24s12s12s8s356s")
_REG_REST = REGTYPE + _NO_LINK + _TAIL
_REG_REST_SUM = _TAIL_SUM + REGTYPE[0]
_oct11_cache: dict[int, tuple[bytes, int]] = {}


def _oct11_field(value: int) -> tuple[bytes, int]:
    """A size or time field with its byte sum (a layer of small files has few of each)."""
    if len(_oct11_cache) > 8192:
        _oct11_cache.clear()
    field = b"%011o\x00" % value
    hit = _oct11_cache[value] = (field, sum(field))
    return hit


def simple_header_into(buf: bytearray | memoryview, offset: int, name: bytes, mode: int,
                       uid: int, gid: int, size: int, mtime: int, rest: bytes = _REG_REST,
                       rest_sum: int = _REG_REST_SUM) -> bool:
    """Write :func:`simple_header` of a regular file (``REGTYPE``) into ``buf`` at
    ``offset`` (one block); False, nothing written, where a field needs a PAX header.
    ``rest``: the block from the type flag on, with ``rest_sum`` its checksum share
    (:func:`symlink_header_into`)."""
    if not (0 <= uid <= _MAX_OCT7 and 0 <= gid <= _MAX_OCT7 and 0 <= size <= _MAX_OCT11
            and 0 <= mtime <= _MAX_OCT11 and len(name) <= 100):
        return False
    ids, ids_sum = _ids_cache.get((mode & 0o7777, uid, gid)) or _ids_field(mode & 0o7777,
                                                                           uid, gid)
    size_f, size_sum = _oct11_cache.get(size) or _oct11_field(size)
    mtime_f, mtime_sum = _oct11_cache.get(mtime) or _oct11_field(mtime)
    _SIMPLE.pack_into(buf, offset, name, ids, size_f, mtime_f,
                      b"%06o\x00 " % (rest_sum + ids_sum + size_sum + mtime_sum + sum(name)),
                      rest)
    return True


def symlink_header_into(buf: bytearray | memoryview, offset: int, name: bytes, mode: int,
                        uid: int, gid: int, mtime: int, target: bytes) -> bool:
    """Write the one-block header of a symlink (``SYMTYPE``, the :func:`header` bytes)
    into ``buf`` at ``offset``; False, nothing written, where a field needs a PAX header
    (a name or a target over 100 bytes, ids or the time out of octal range)."""
    return len(target) <= 100 and simple_header_into(
        buf, offset, name, mode, uid, gid, 0, mtime, SYMTYPE + target.ljust(100, b"\x00") + _TAIL,
        _TAIL_SUM + SYMTYPE[0] + sum(target))


def header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
           linkname: bytes = b"", devmajor: int = 0, devminor: int = 0,
           xattrs: dict[str, bytes] | None = None) -> bytes:
    """The header block(s) of one member: a PAX header first if any field needs it."""
    pax: list[bytes] = []
    if len(name) > 100:
        pax.append(pax_record(b"path", name))
        name = name[:100]
    if len(linkname) > 100:
        pax.append(pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    if not 0 <= uid <= _MAX_OCT7:
        pax.append(pax_record(b"uid", b"%d" % uid))
        uid = 0
    if not 0 <= gid <= _MAX_OCT7:
        pax.append(pax_record(b"gid", b"%d" % gid))
        gid = 0
    if size > _MAX_OCT11:
        pax.append(pax_record(b"size", b"%d" % size))
    if not 0 <= mtime <= _MAX_OCT11:
        pax.append(pax_record(b"mtime", b"%d" % mtime))
    if xattrs:
        for key in sorted(xattrs):
            pax.append(pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"),
                                  xattrs[key]))
    if pax and _needs_binary_charset(pax):
        pax.insert(0, pax_record(b"hdrcharset", b"BINARY"))
    devmajor_s = _OCT7_ZERO if not devmajor else (
        _oct7(devmajor) if devmajor <= _MAX_OCT7 else _base256(devmajor, 8))
    devminor_s = _OCT7_ZERO if not devminor else (
        _oct7(devminor) if devminor <= _MAX_OCT7 else _base256(devminor, 8))
    member = _ustar(name, mode & 0o7777, uid, gid, size if size <= _MAX_OCT11 else 0,
                    min(max(mtime, 0), _MAX_OCT11), typeflag, linkname, devmajor_s, devminor_s)
    if not pax:
        return member
    records = b"".join(pax)
    xhdr = _ustar(_PAX_NAME, 0o644, 0, 0, len(records), min(max(mtime, 0), _MAX_OCT11),
                  XHDTYPE, b"", _OCT7_ZERO, _OCT7_ZERO)
    return xhdr + records + bytes(padding(len(records))) + member


def _needs_binary_charset(records: list[bytes]) -> bool:
    """Path records must be UTF-8 unless ``hdrcharset=BINARY`` says otherwise."""
    for rec in records:
        key = rec.split(b" ", 1)[1].split(b"=", 1)[0]
        if key in (b"path", b"linkpath"):
            try:
                rec.decode("utf-8")
            except UnicodeDecodeError:
                return True
    return False


def typeflag_of(mode: int) -> bytes | None:
    """The tar type of a file mode; None for sockets (tar cannot hold them)."""
    if stat.S_ISREG(mode):
        return REGTYPE
    if stat.S_ISDIR(mode):
        return DIRTYPE
    if stat.S_ISLNK(mode):
        return SYMTYPE
    if stat.S_ISCHR(mode):
        return CHRTYPE
    if stat.S_ISBLK(mode):
        return BLKTYPE
    if stat.S_ISFIFO(mode):
        return FIFOTYPE
    return None
