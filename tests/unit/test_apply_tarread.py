"""The streaming tar reader of apply (aufs.archive.tarread): header formats (ustar, GNU,
PAX, v7), numbers, checksums, strict ends, data handed out as views or left in a file."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aufs.archive import ArchiveError
from aufs.archive import tarheader as h
from aufs.archive import tarread as t
from aufs.archive.compression import open_chunks


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def read_all(data: bytes, chunk: int = 1000) -> list[tuple[t.Member, bytes]]:
    """Every member with its data, the stream fed in pieces of ``chunk`` bytes."""
    it = _chunks(data, chunk)
    reader = t.TarReader(lambda: next(it, b""))
    out = []
    while (m := reader.next()) is not None:
        views, _, length = reader.take(m.size)
        assert length == 0
        out.append((m, b"".join(bytes(v) for v in views)))
    return out


def tar_of(*infos: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in infos:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
def test_every_field(fmt: int, chunk: int) -> None:
    data = tar_of(
        (info("dir", tarfile.DIRTYPE, mode=0o1755, uid=5, gid=6, mtime=1234), b""),
        (info("dir/file", mode=0o4711, uid=1000, gid=1001, mtime=99), b"x" * 700),
        (info("dir/link", tarfile.LNKTYPE, linkname="dir/file"), b""),
        (info("dir/sym", tarfile.SYMTYPE, linkname="/abs/target"), b""),
        (info("dev", tarfile.CHRTYPE, devmajor=4, devminor=64, mode=0o620), b""),
        (info("blk", tarfile.BLKTYPE, devmajor=7, devminor=3), b""),
        (info("fifo", tarfile.FIFOTYPE), b""),
        (info("empty"), b""),
        fmt=fmt)
    got = read_all(data, chunk)
    by_name = {m.name.rstrip("/"): (m, d) for m, d in got}  # tarfile writes "dir/"
    assert [m.name.rstrip("/") for m, _ in got] == ["dir", "dir/file", "dir/link", "dir/sym", "dev",
                                        "blk", "fifo", "empty"]
    d, _ = by_name["dir"]
    assert (d.kind, d.mode, d.uid, d.gid, d.mtime_ns) == (t.DIR, 0o1755, 5, 6, 1234 * 10**9)
    f, body = by_name["dir/file"]
    assert (f.kind, f.mode, f.uid, f.gid, f.size, body) == (t.REG, 0o4711, 1000, 1001, 700,
                                                           b"x" * 700)
    assert by_name["dir/link"][0].kind == t.LNK
    assert by_name["dir/link"][0].linkname == "dir/file"
    assert by_name["dir/sym"][0].linkname == "/abs/target"
    dev = by_name["dev"][0]
    assert (dev.kind, dev.devmajor, dev.devminor, dev.mode) == (t.CHR, 4, 64, 0o620)
    assert by_name["blk"][0].kind == t.BLK and by_name["fifo"][0].kind == t.FIFO
    assert by_name["empty"][0].size == 0


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_targets(fmt: int) -> None:
    name = "/".join(["d" * 90] * 5) + "/f"
    target = "t" * 400
    got = read_all(tar_of((info(name), b"long"),
                          (info("sym", tarfile.SYMTYPE, linkname=target), b""), fmt=fmt))
    assert (got[0][0].name, got[0][1]) == (name, b"long")
    assert got[1][0].linkname == target


def test_ustar_prefix_field() -> None:
    name = "p" * 120 + "/" + "n" * 90
    got = read_all(tar_of((info(name), b"x"), fmt=tarfile.USTAR_FORMAT))
    assert got[0][0].name == name


def test_non_utf8_names_round_trip() -> None:
    raw = b"caf\xe9/\xff\xfe"
    name = os.fsdecode(raw)
    got = read_all(tar_of((info(name), b"x"), fmt=tarfile.GNU_FORMAT))
    assert os.fsencode(got[0][0].name) == raw


def test_pax_records() -> None:
    ti = info("short", uid=1, gid=2)
    ti.pax_headers = {"path": "the/real/name", "mtime": "1234567890.5", "atime": "-1.25",
                      "uid": "3000000", "gid": "4000000",
                      "SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "\x01",
                      "comment": "ignored", "ctime": "5"}
    m, _ = read_all(tar_of((ti, b"data")))[0]
    assert m.name == "the/real/name"
    assert (m.mtime_ns, m.atime_ns) == (1_234_567_890_500_000_000, -1_250_000_000)
    assert (m.uid, m.gid) == (3_000_000, 4_000_000)
    assert sorted(m.xattrs or []) == [("security.capability", b"\x01"), ("user.k", b"v")]


def _header(name: bytes, typeflag: bytes, size: int) -> bytes:
    """A ustar header block (for extended headers tarfile will not write as asked)."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def extended(typeflag: bytes, records: bytes, name: bytes = b"PaxHeader") -> bytes:
    """An ``x`` or ``g`` header with its data, padded to whole blocks."""
    return _header(name, typeflag, len(records)) + records + bytes(-len(records) % 512)


def member(name: bytes, data: bytes = b"") -> bytes:
    return _header(name, b"0", len(data)) + data + bytes(-len(data) % 512)


END = bytes(1024)


def test_pax_global_header_is_ignored() -> None:
    """Docker (Go's reader, then Unpack) skips a ``g`` header: it renames, re-owns and
    re-sizes nothing."""
    glob = extended(b"g", pax_record(b"path", b"evil") + pax_record(b"uid", b"4242")
                    + pax_record(b"mtime", b"77") + pax_record(b"size", b"100000")
                    + pax_record(b"SCHILY.xattr.user.g", b"v"), name=b"pax_global_header")
    got = read_all(glob + member(b"a", b"one") + member(b"b", b"two") + END)
    assert [(m.name, m.uid, m.mtime_ns, m.xattrs, d) for m, d in got] == [
        ("a", 0, 0, None, b"one"), ("b", 0, 0, None, b"two")]


def test_pax_global_header_written_by_tarfile_is_ignored() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"mtime": "77", "comment": "git archive"}) as tf:
        for name in ("a", "b"):
            ti = info(name, mtime=5)
            tf.addfile(ti, io.BytesIO(b""))
    got = read_all(buf.getvalue())
    assert [(m.name, m.mtime_ns) for m, _ in got] == [("a", 5 * 10**9), ("b", 5 * 10**9)]


def test_tar_of_only_a_global_header() -> None:
    """Docker's TestXGlobalNoParent: a global header named ``foo/bar`` and nothing else
    is an empty archive (no member, no parent directory)."""
    assert read_all(extended(b"g", pax_record(b"comment", b"x"), name=b"foo/bar") + END) == []
    assert read_all(extended(b"g", b"", name=b"foo/bar") + END) == []


def test_global_header_drops_what_was_pending() -> None:
    """Go returns the ``g`` header as an entry of its own: a pending ``x`` or GNU long
    name before it applies to nothing."""
    data = (extended(b"x", pax_record(b"path", b"renamed")) + extended(b"g", b"")
            + member(b"plain", b"x") + END)
    assert [m.name for m, _ in read_all(data)] == ["plain"]


def test_malformed_global_header_is_an_error() -> None:
    with pytest.raises(ArchiveError, match="malformed PAX record"):
        read_all(extended(b"g", b"garbage\n") + member(b"a") + END)


def test_later_pax_header_replaces_the_pending_one() -> None:
    data = (extended(b"x", pax_record(b"path", b"first") + pax_record(b"uid", b"7"))
            + extended(b"x", pax_record(b"mtime", b"9"))
            + member(b"plain", b"x") + END)
    (m, d), = read_all(data)
    assert (m.name, m.uid, m.mtime_ns, d) == ("plain", 0, 9 * 10**9, b"x")


@pytest.mark.parametrize("typeflag", [b"x", b"g", b"L", b"K"])
def test_extended_header_limit_is_one_mebibyte(typeflag: bytes) -> None:
    """Go's maxSpecialFileSize: 1 MiB of records is read, one byte more is refused."""
    limit = 1 << 20

    def records(size: int) -> bytes:
        if typeflag in (b"x", b"g"):
            return pax_record(b"comment", b"c" * (size - 17))  # 7 digits, " comment=", "\n"
        return b"n" * (size - 1) + b"\0"

    assert len(records(limit)) == limit and len(records(limit + 1)) == limit + 1
    ok = extended(typeflag, records(limit)) + member(b"a", b"data") + END
    assert read_all(ok, chunk=1 << 16)[-1][1] == b"data"
    with pytest.raises(ArchiveError, match="too large"):
        read_all(extended(typeflag, records(limit + 1)) + member(b"a", b"data") + END,
                 chunk=1 << 16)


def test_parse_pax_table() -> None:
    assert h.parse_pax(b"11 path=ab\n13 linkpath=\n") == {b"path": b"ab", b"linkpath": b""}
    assert h.parse_pax(b"11 k=a b=c\n\0\0\0") == {b"k": b"a b=c"}
    for bad in (b"x path=ab\n", b"99 path=ab\n", b"10 path=ab", b"9 pathab\n"):
        with pytest.raises(ArchiveError):
            h.parse_pax(bad)


def test_libarchive_xattrs() -> None:
    ti = info("f")
    ti.pax_headers = {"LIBARCHIVE.xattr.user.a%3Db": "aGVsbG8"}  # "hello", unpadded
    m, _ = read_all(tar_of((ti, b"")))[0]
    assert m.xattrs == [("user.a=b", b"hello")]


def test_base256_numbers() -> None:
    ti = info("big", uid=0o7777777 + 5, gid=3)
    m, _ = read_all(tar_of((ti, b"x"), fmt=tarfile.GNU_FORMAT))[0]
    assert m.uid == 0o7777777 + 5


def _patched(data: bytes, at: int, field: slice, value: bytes) -> bytes:
    header = bytearray(data[at:at + 512])
    header[field] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return data[:at] + bytes(header) + data[at + 512:]


def test_unterminated_octal_field_is_read_whole() -> None:
    data = tar_of((info("f", mode=0o644), b""), fmt=tarfile.USTAR_FORMAT)
    m, _ = read_all(_patched(data, 0, slice(100, 108), b"00000755"))[0]
    assert m.mode == 0o755


def test_signed_checksum_is_accepted() -> None:
    data = bytearray(tar_of((info("\xe9t\xe9", uid=1), b""), fmt=tarfile.GNU_FORMAT))
    header = data[:512]
    header[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in header)
    header[148:156] = b"%06o\0 " % signed
    data[:512] = header
    assert read_all(bytes(data))[0][0].name == "\xe9t\xe9"


def test_bad_checksum() -> None:
    data = bytearray(tar_of((info("f"), b"x")))
    data[5] ^= 1
    with pytest.raises(ArchiveError, match="checksum"):
        read_all(bytes(data))


def test_negative_owner_is_refused() -> None:
    data = tar_of((info("f"), b""), fmt=tarfile.USTAR_FORMAT)
    with pytest.raises(ArchiveError):
        read_all(_patched(data, 0, slice(108, 116), b"-000001\0"))


def test_old_v7_directory_by_trailing_slash() -> None:
    data = tar_of((info("d/", tarfile.AREGTYPE), b""), fmt=tarfile.USTAR_FORMAT)
    data = _patched(data, 0, slice(257, 265), b"\0" * 8)  # no magic: v7
    m, _ = read_all(data)[0]
    assert (m.name, m.kind) == ("d/", t.DIR)


@pytest.mark.parametrize(("kind", "what"), [(b"S", "sparse"), (b"M", "multi-volume"),
                                            (b"V", "volume"), (b"Z", "unknown")])
def test_refused_types(kind: bytes, what: str) -> None:
    data = tar_of((info("f"), b""), fmt=tarfile.USTAR_FORMAT)
    with pytest.raises(ArchiveError, match=what):
        read_all(_patched(data, 0, slice(156, 157), kind))


def test_pax_sparse_is_refused() -> None:
    ti = info("f")
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    with pytest.raises(ArchiveError, match="sparse"):
        read_all(tar_of((ti, b"")))


def test_header_only_types_have_no_data() -> None:
    """A directory whose size field says 512: no data follows (as Go reads it)."""
    data = tar_of((info("d", tarfile.DIRTYPE), b""), (info("f"), b"after"),
                  fmt=tarfile.USTAR_FORMAT)
    data = _patched(data, 0, slice(124, 136), b"00000001000\0")
    assert [(m.name, d) for m, d in read_all(data)] == [("d/", b""), ("f", b"after")]


def test_ends() -> None:
    data = tar_of((info("a"), b"a" * 600))
    assert read_all(b"") == []
    assert [m.name for m, _ in read_all(data[:2048])] == ["a"]  # one end block is enough
    for cut in (100, 512, 700, 1536):  # in a header, at a member, in data, no end block
        with pytest.raises(ArchiveError, match="truncated"):
            read_all(data[:cut])
    lone = data[:1536] + bytes(512) + data[:512] + bytes(1024)
    with pytest.raises(ArchiveError, match="lone zero block"):
        read_all(lone)


def test_end_after_extended_header_is_truncation() -> None:
    ti = info("x" * 200)
    data = tar_of((ti, b""))
    with pytest.raises(ArchiveError):
        read_all(data[:1024] + bytes(1024))  # the PAX header, then the end blocks


def test_oversized_extended_header() -> None:
    data = tar_of((info("f"), b""), fmt=tarfile.USTAR_FORMAT)
    huge = _patched(data, 0, slice(156, 157), b"x")
    huge = _patched(huge, 0, slice(124, 136), b"77777777777\0")
    with pytest.raises(ArchiveError, match="too large"):
        read_all(huge)


def test_file_source_leaves_big_data_in_the_file(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    data = tar_of((info("small"), b"s" * 100), (info("big"), big), (info("after"), b"z"))
    path = tmp_path / "t.tar"
    path.write_bytes(data)
    with open(path, "rb") as f:
        _, chunks = open_chunks(f)
        assert chunks.skip is not None
        reader = t.TarReader(chunks.read, chunks.skip)
        got = {}
        while (m := reader.next()) is not None:
            views, offset, length = reader.take(m.size)
            body = b"".join(bytes(v) for v in views)
            if length:
                body += os.pread(chunks.fd, length, offset)
                assert m.name == "big"
            got[m.name] = body
        chunks.close()
        assert f.tell() == len(data)  # the stream is left after what was read
    assert got == {"small": b"s" * 100, "big": big, "after": b"z"}


def test_file_source_truncated_in_big_data(tmp_path: Path) -> None:
    data = tar_of((info("big"), os.urandom(2 << 20)))
    path = tmp_path / "t.tar"
    path.write_bytes(data[:1 << 20])
    with open(path, "rb") as f, pytest.raises(ArchiveError, match="truncated"):
        _, chunks = open_chunks(f)
        reader = t.TarReader(chunks.read, chunks.skip)
        m = reader.next()
        assert m is not None
        reader.take(m.size)


def test_file_source_from_the_middle_of_a_file(tmp_path: Path) -> None:
    """A stream whose position is not 0 (a tar inside a bigger file) reads from there."""
    data = tar_of((info("f"), b"content"))
    path = tmp_path / "t.bin"
    path.write_bytes(b"HEAD" * 100 + data)
    with open(path, "rb") as f:
        f.seek(400)
        _, chunks = open_chunks(f)
        reader = t.TarReader(chunks.read, chunks.skip)
        m = reader.next()
        assert m is not None and m.name == "f"
        assert b"".join(bytes(v) for v in reader.take(m.size)[0]) == b"content"


@pytest.mark.parametrize("chunk", [100, 1000, 1 << 20])
def test_drop_passes_over_data(chunk: int) -> None:
    """``drop``: a member's data passed over unread (the writer process reads it), in
    the buffer or across chunks; the next member follows; no more than the data."""
    data = tar_of((info("a"), b"a" * 5000), (info("b"), b"b" * 700), (info("c"), b"c"))
    it = _chunks(data, chunk)
    reader = t.TarReader(lambda: next(it, b""))
    names = []
    while (m := reader.next()) is not None:
        names.append(m.name)
        if m.name == "c":
            with pytest.raises(ValueError):
                reader.drop(2)
            assert b"".join(bytes(v) for v in reader.take(1)[0]) == b"c"
        else:
            reader.drop(m.size - 1)
            assert reader.left == 1
            reader.drop(1)
    assert names == ["a", "b", "c"]
    truncated = _chunks(data[:3000], chunk)
    reader = t.TarReader(lambda: next(truncated, b""))
    m = reader.next()
    assert m is not None
    with pytest.raises(ArchiveError, match="truncated"):
        reader.drop(m.size)


def _fields(m: t.Member) -> tuple[object, ...]:
    return tuple(getattr(m, k) for k in t.Member.__slots__)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_plain_files_read_fast_as_the_general_path_reads_them(
        fmt: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain regular file's header takes a short path (owner and mode remembered by
    their bytes); every member comes out as the general path makes it, the cache never
    mixing up two owners or modes."""
    prefixed = "p" * 120 + "/" + "n" * 30  # the ustar prefix field
    big = [] if fmt == tarfile.USTAR_FORMAT else [  # base-256 (GNU) or PAX
        (info("big-owner", uid=0o7777777 + 5, gid=3), b"b")]
    data = tar_of(
        (info("a", mode=0o644, uid=1, gid=2, mtime=5), b"x"),
        (info("b", mode=0o644, uid=1, gid=2, mtime=6), b"yy"),
        (info("c", mode=0o4755, uid=1, gid=2, mtime=6), b""),
        (info("d", mode=0o644, uid=2, gid=1, mtime=0o77777777777), b"z" * 600),
        (info(prefixed, mode=0o600, uid=1, gid=2), b"p"),
        *big,
        (info("h", tarfile.LNKTYPE, linkname="a"), b""),
        (info("\xe9t\xe9", mode=0o640, uid=1, gid=2), b"e"),
        fmt=fmt)
    real = t.TarReader._plain_file
    taken: list[str] = []

    def counted(self: t.TarReader, block: bytes, size: int, offset: int) -> t.Member | None:
        m = real(self, block, size, offset)
        if m is not None:
            taken.append(m.name)
        return m

    monkeypatch.setattr(t.TarReader, "_plain_file", counted)
    fast = read_all(data, chunk=700)
    monkeypatch.setattr(t.TarReader, "_plain_file", lambda *_: None)
    general = read_all(data, chunk=700)
    assert [(_fields(m), d) for m, d in fast] == [(_fields(m), d) for m, d in general]
    assert [m.name for m, _ in fast][4] == prefixed
    assert [(m.mode, m.uid, m.gid) for m, _ in fast][:4] == [
        (0o644, 1, 2), (0o644, 1, 2), (0o4755, 1, 2), (0o644, 2, 1)]
    # (tarfile writes PAX records for the long and the non-ASCII name: the general path)
    assert taken[:4] == ["a", "b", "c", "d"]
    assert ("\xe9t\xe9" in taken) == (fmt != tarfile.PAX_FORMAT)
