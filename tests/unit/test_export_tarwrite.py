"""The header codec: every field readable by Python's tarfile, PAX only when needed."""

from __future__ import annotations

import io
import tarfile

import pytest

from aufs.archive import tarwrite
from aufs.archive.tarwrite import header, pax_record, simple_header


def parse(data: bytes) -> tarfile.TarInfo:
    """Read one member from ``data`` (a header, with no content) plus end blocks."""
    with tarfile.open(fileobj=io.BytesIO(data + bytes(1024)), mode="r:") as tar:
        members = tar.getmembers()
    assert len(members) == 1
    return members[0]


@pytest.mark.parametrize("payload", [b"", b"x" * 5, b"y" * 90, b"z" * 994, b"w" * 9993])
def test_pax_record_length_counts_itself(payload: bytes) -> None:
    rec = pax_record(b"path", payload)
    length, rest = rec.split(b" ", 1)
    assert int(length) == len(rec)
    assert rest == b"path=" + payload + b"\n"


def test_simple_header_equals_the_general_one() -> None:
    for args in [(b"a", 0o644, 0, 0, 0, 0, b"0"), (b"dir/", 0o40755, 1, 2, 0, 1, b"5"),
                 (b"n" * 100, 0o104755, 2097151, 2097151, 8**11 - 1, 8**11 - 1, b"0")]:
        assert simple_header(*args) == header(*args)
        assert len(simple_header(*args)) == 512


def test_plain_member_is_one_ustar_block() -> None:
    hdr = header(b"usr/bin/su", 0o104755, 0, 0, 1004, 1_600_000_000, tarwrite.REGTYPE)
    assert len(hdr) == 512 and hdr[257:265] == b"ustar\x0000"
    info = parse(hdr + bytes(1024))  # 1004 bytes of content, padded
    assert (info.name, info.mode, info.size, info.mtime) == ("usr/bin/su", 0o4755, 1004,
                                                             1_600_000_000)
    assert info.uname == info.gname == ""
    assert info.chksum == sum(hdr[:148]) + 8 * 0x20 + sum(hdr[156:])


def test_long_name_and_link_use_pax() -> None:
    name = b"a/" * 80 + b"file"
    target = b"/" + b"t" * 300
    hdr = header(name, 0o777, 0, 0, 0, 5, tarwrite.SYMTYPE, target)
    assert hdr[156:157] == b"x"  # a PAX header first
    info = parse(hdr)
    assert info.name == name.decode() and info.linkname == target.decode()


def test_short_fields_need_no_pax() -> None:
    assert len(header(b"x" * 100, 0o644, 0, 0, 0, 0, tarwrite.REGTYPE)) == 512
    assert len(header(b"x", 0o644, 0, 0, 0, 0, tarwrite.SYMTYPE, b"l" * 100)) == 512


def test_out_of_range_numbers_use_pax() -> None:
    big = 20 * (1 << 30)
    hdr = header(b"big", 0o600, 3_000_000, 4_000_000, big, 2**40, tarwrite.REGTYPE)
    with tarfile.open(fileobj=io.BytesIO(hdr), mode="r|") as tar:
        info = tar.next()
    assert info is not None
    assert (info.uid, info.gid, info.size, info.mtime) == (3_000_000, 4_000_000, big, 2**40)


def test_negative_mtime_uses_pax() -> None:
    info = parse(header(b"old", 0o644, 0, 0, 0, -86400, tarwrite.REGTYPE))
    assert info.mtime == -86400


def test_non_utf8_long_name_is_binary_pax() -> None:
    name = b"dir/" + b"\xe9" * 120
    hdr = header(name, 0o644, 0, 0, 0, 0, tarwrite.REGTYPE)
    assert b"hdrcharset=BINARY" in hdr
    with tarfile.open(fileobj=io.BytesIO(hdr + bytes(1024)), mode="r:",
                      encoding="utf-8", errors="surrogateescape") as tar:
        assert tar.getnames()[0].encode("utf-8", "surrogateescape") == name


def test_big_device_numbers_use_base256() -> None:
    info = parse(header(b"dev", 0o600, 0, 0, 0, 0, tarwrite.CHRTYPE, devmajor=1 << 22,
                        devminor=(1 << 30) + 5))
    assert (info.devmajor, info.devminor) == (1 << 22, (1 << 30) + 5)


def test_xattrs_are_schily_records_sorted() -> None:
    hdr = header(b"f", 0o644, 0, 0, 0, 0, tarwrite.REGTYPE,
                 xattrs={"user.b": b"2", "security.capability": b"\x01\x00\xff"})
    info = parse(hdr)
    keys = [k for k in info.pax_headers if k.startswith("SCHILY.xattr.")]
    assert keys == ["SCHILY.xattr.security.capability", "SCHILY.xattr.user.b"]
    cap = info.pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == b"\x01\x00\xff"


def test_typeflag_of_every_kind() -> None:
    import stat

    assert tarwrite.typeflag_of(stat.S_IFREG | 0o644) == b"0"
    assert tarwrite.typeflag_of(stat.S_IFDIR) == b"5"
    assert tarwrite.typeflag_of(stat.S_IFLNK) == b"2"
    assert tarwrite.typeflag_of(stat.S_IFCHR) == b"3"
    assert tarwrite.typeflag_of(stat.S_IFBLK) == b"4"
    assert tarwrite.typeflag_of(stat.S_IFIFO) == b"6"
    assert tarwrite.typeflag_of(stat.S_IFSOCK) is None


@pytest.mark.parametrize(("name", "target", "uid", "gid", "mtime", "fits"), [
    (b"l", b"", 0, 0, 0, True),
    (b"a/l", b"../t", 1000, 1000, 1_700_000_000, True),
    (b"n" * 100, b"t" * 100, 0o7777777, 0o7777777, 0o77777777777, True),
    (b"\xff\xfe", b"\xc3\x28", 5, 6, 7, True),  # not UTF-8: ustar bytes as they are
    (b"n" * 101, b"t", 0, 0, 0, False),       # PAX path
    (b"l", b"t" * 101, 0, 0, 0, False),       # PAX linkpath
    (b"l", b"t", 0o10000000, 0, 0, False),    # PAX uid
    (b"l", b"t", 0, 0, -1, False),            # PAX mtime
])
def test_symlink_header_into_equals_the_general_header(
        name: bytes, target: bytes, uid: int, gid: int, mtime: int, fits: bool) -> None:
    buf = bytearray(b"\xaa" * 1024)
    assert tarwrite.symlink_header_into(buf, 512, name, 0o120777, uid, gid, mtime,
                                        target) is fits
    if fits:
        assert bytes(buf[512:]) == header(name, 0o120777, uid, gid, 0, mtime,
                                          tarwrite.SYMTYPE, target)
        assert buf[:512] == b"\xaa" * 512
        info = tarfile.TarInfo.frombuf(bytes(buf[512:]), "utf-8", "surrogateescape")
        assert info.issym() and info.linkname.encode("utf-8", "surrogateescape") == target
    else:
        assert buf == bytearray(b"\xaa" * 1024)  # nothing written
