"""Tar header fields, pure: numbers (octal, GNU base-256), checksums, PAX records.

The codec half of :mod:`aufs.archive.tarread`; no I/O. Malformed fields raise
:class:`aufs.archive.ArchiveError`.
"""

from __future__ import annotations

import base64
import urllib.parse
import zlib

from aufs.errors import ArchiveError

__all__ = ["PAX_PLAIN", "check_sum", "cstr", "decode", "number", "parse_pax", "pax_extras",
           "pax_int", "pax_time"]

_ENDS = (b"\0", b" ")
_XATTR = b"SCHILY.xattr."
_LA_XATTR = b"LIBARCHIVE.xattr."


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def cstr(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def number(field: bytes, what: str, offset: int) -> int:
    """An octal (NUL/space padded) or GNU base-256 header number."""
    if field[-1:] in _ENDS:
        try:  # the usual shape: digits (maybe space-padded), then a NUL or a space
            return int(field[:-1], 8)
        except ValueError:
            pass
    if field and field[0] & 0x80:
        value = int.from_bytes(field, "big", signed=field[0] == 0xFF)
        return value if field[0] == 0xFF else value - (0x80 << (8 * (len(field) - 1)))
    text = cstr(field).strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"bad {what} field {field!r} in the tar header at byte "
                           f"{offset}") from None


def pax_time(value: bytes, key: str) -> int:
    """A PAX time ("1234.5678", maybe negative) in nanoseconds."""
    sec, _, frac = value.partition(b".")
    try:
        if sec.isdigit() and (not frac or frac.isdigit()):
            return int(sec) * 1_000_000_000 + int((frac + b"000000000")[:9])
        if sec[:1] == b"-" and sec[1:].isdigit() and (not frac or frac.isdigit()):
            return -(int(sec[1:]) * 1_000_000_000 + int((frac + b"000000000")[:9]))
    except ValueError:
        pass
    raise ArchiveError(f"bad PAX {key} {value!r}")


def pax_int(value: bytes, key: str) -> int:
    if not value.isdigit():
        raise ArchiveError(f"bad PAX {key} {value!r}")
    return int(value)


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX extended header records ("<len> <key>=<value>\n") as a dict (pure)."""
    out: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    find = data.find
    while pos < end:
        space = find(b" ", pos, pos + 24)
        length = data[pos:space]
        if space < 0 or not length.isdigit():
            if not data[pos:].strip(b"\0"):  # NUL padding after the last record
                break
            raise ArchiveError(f"malformed PAX record at {pos}: {data[pos:pos + 30]!r}")
        stop = pos + int(length)
        eq = find(b"=", space + 1, stop)
        if stop > end or eq < 0 or data[stop - 1] != 0x0A:
            raise ArchiveError(f"malformed PAX record at {pos}: {data[pos:pos + 30]!r}")
        out[data[space + 1:eq]] = data[eq + 1:stop - 1]
        pos = stop
    return out


# PAX keys read by name; a header with any other key is searched for prefixes.
PAX_PLAIN = frozenset((b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"atime",
                       b"ctime", b"uname", b"gname", b"comment", b"charset", b"hdrcharset",
                       b"SCHILY.devmajor", b"SCHILY.devminor"))


def pax_extras(pax: dict[bytes, bytes], offset: int) -> list[tuple[str, bytes]] | None:
    """The xattrs of a PAX header; refuses GNU sparse files."""
    xattrs: list[tuple[str, bytes]] | None = None
    libarchive = False
    for key, value in pax.items():
        if key in PAX_PLAIN:
            continue
        if key.startswith(_XATTR):
            xattrs = xattrs or []
            xattrs.append((decode(key[len(_XATTR):]), value))
        elif key.startswith(_LA_XATTR):
            libarchive = True
        elif key.startswith(b"GNU.sparse."):
            raise ArchiveError(f"tar header at byte {offset}: a GNU sparse file is not "
                               "supported")
    if libarchive:
        xattrs = _libarchive_xattrs(pax, xattrs or [])
    return xattrs


_ADLER_MOD = 65521


def check_sum(block: bytes, offset: int) -> None:
    """The header checksum: the sum of the header's bytes, its own field as spaces.

    Adler-32's low half is that sum (plus one) modulo 65521, computed in C; a 512-byte
    sum is below 2 * 65521, so the true sum is one of two values. (``sum(block)`` costs
    more than the rest of a header's parsing.) Old tars summed signed chars."""
    field = block[148:156]
    try:
        stored = int(field.split(b"\0", 1)[0], 8)
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


def _libarchive_xattrs(pax: dict[bytes, bytes], xattrs: list[tuple[str, bytes]]
                       ) -> list[tuple[str, bytes]]:
    """bsdtar's ``LIBARCHIVE.xattr.<urlencoded name>=<base64 value>``, for names that
    have no ``SCHILY.xattr`` record."""
    have = {name for name, _ in xattrs}
    for key, value in pax.items():
        if not key.startswith(_LA_XATTR):
            continue
        name = decode(urllib.parse.unquote_to_bytes(key[len(_LA_XATTR):]))
        if name in have:
            continue
        try:
            xattrs.append((name, base64.b64decode(value + b"=" * (-len(value) % 4),
                                                  validate=True)))
        except ValueError:
            raise ArchiveError(f"bad PAX {decode(key)} value") from None
    return xattrs
