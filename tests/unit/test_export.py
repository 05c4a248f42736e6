"""Layer export: every attribute of a layer reaches the tar, read back by three readers.

The tree is built on disk with real files (devices and ownership need root); the tar is
read back with Python's tarfile, GNU tar and bsdtar.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from aufs.archive import ArchiveError
from aufs.archive.entries import _capability_v2
from aufs.archive.export import export_layer
from aufs.whiteout import AUFS, OVERLAY, OVERLAY_OPAQUE_XATTR

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (devices, ownership, trusted.*)")

MTIME = 1_600_000_000
LONG_DIR = "d" * 60 + "/" + "e" * 60
LONG_NAME = LONG_DIR + "/" + "f" * 90
LONG_TARGET = "/" + "t" * 200
RAW_NAME = os.fsdecode(b"caf\xe9-latin1")  # not UTF-8: a surrogate-escaped str
# security.capability, VFS_CAP_REVISION_2: cap_net_bind_service (bit 10) permitted+effective
CAP_V2 = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(4) + bytes(8)


def read_members(stream: IO[bytes]) -> list[tarfile.TarInfo]:
    data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def tar_bytes(path: Path) -> bytes:
    with export_layer(str(path)) as stream:
        return stream.read()


def by_name(members: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members}


@dataclass
class Layer:
    root: Path


def build_layer(root: Path, *, fmt: str = "aufs") -> Layer:
    """A layer directory holding one of everything a layer can hold."""
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    suid = root / "usr" / "bin" / "su"
    suid.parent.mkdir(parents=True)
    suid.write_bytes(b"\x7fELF" + bytes(1000))
    os.chmod(suid, 0o4755)
    sgid = root / "usr" / "bin" / "wall"
    sgid.write_bytes(b"wall")
    os.chmod(sgid, 0o2711)
    tmp = root / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    (root / "lib").mkdir()
    (root / "lib" / "h1").write_bytes(b"linked content")
    os.link(root / "lib" / "h1", root / "lib" / "h2")
    os.link(root / "lib" / "h1", root / "usr" / "h3")
    os.symlink("../lib/h1", root / "usr" / "rel-link")
    os.symlink("/etc/passwd", root / "usr" / "abs-link")
    os.symlink(LONG_TARGET, root / "usr" / "long-link")
    os.mkfifo(root / "usr" / "fifo", 0o640)
    long = root / LONG_NAME
    long.parent.mkdir(parents=True)
    long.write_bytes(b"long name")
    (root / RAW_NAME).write_bytes(b"raw")
    xf = root / "usr" / "xattr-file"
    xf.write_bytes(b"x")
    os.setxattr(xf, "user.comment", b"hello\x00world")
    # whiteouts and opaque directories of the requested on-disk format
    opq = root / "opaque-dir"
    opq.mkdir()
    (opq / "kept").write_text("kept")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    ofd = os.open(opq, os.O_RDONLY | os.O_DIRECTORY)
    try:
        wf = AUFS if fmt == "aufs" else OVERLAY
        wf.make_whiteout(fd, "gone")
        wf.make_opaque(ofd)
    finally:
        os.close(fd)
        os.close(ofd)
    # AUFS housekeeping: never content
    plnk = root / ".wh..wh.plnk"
    plnk.mkdir()
    os.link(root / "etc" / "passwd", plnk / "123.456")
    (root / ".wh..wh.aufs").write_bytes(b"")
    (root / ".wh..wh.orph").mkdir()
    if ROOT:
        os.mknod(root / "usr" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "usr" / "loop9", stat.S_IFBLK | 0o660, os.makedev(7, 9))
        os.mknod(root / "usr" / "bigdev", stat.S_IFCHR | 0o600, os.makedev(4095, 1048575))
        os.chmod(root / "usr" / "null", 0o666)  # mknod obeys the umask
        os.chmod(root / "usr" / "loop9", 0o660)
        os.chown(root / "etc" / "passwd", 1234, 5678)
        os.chown(root / "usr" / "rel-link", 42, 43, follow_symlinks=False)
        os.chown(root / "usr" / "bin" / "wall", 0, 3000000)  # beyond octal range: PAX gid
        os.chmod(sgid, 0o2711)  # chown cleared it
        os.setxattr(suid, "security.capability", CAP_V2)
        os.setxattr(xf, "trusted.overlay.origin", b"\x00\xfb")  # overlay's own: never exported
        os.setxattr(xf, "trusted.custom", b"t")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))
    return Layer(root)


@pytest.fixture
def layer(tmp_path: Path) -> Layer:
    return build_layer(tmp_path / "layer")


def test_names_are_relative_sorted_and_parents_first(layer: Layer) -> None:
    names = [m.name for m in read_members(export_layer(str(layer.root)))]
    assert names[0] == ".wh.gone"  # "." sorts before letters; no root entry, no "./"
    assert not any(n.startswith(("/", "./")) or n in ("", ".") for n in names)
    seen: set[str] = set()
    for n in names:
        parent = os.path.dirname(n)
        assert not parent or parent in seen, f"{n} before its directory"
        seen.add(n)
    tops = [n for n in names if "/" not in n]
    assert tops == sorted(tops, key=os.fsencode)


def test_whiteouts_opaque_and_housekeeping(layer: Layer) -> None:
    members = by_name(read_members(export_layer(str(layer.root))))
    wh = members[".wh.gone"]
    assert wh.isreg() and wh.size == 0
    opq = members["opaque-dir/.wh..wh..opq"]
    assert opq.isreg() and opq.size == 0
    assert "opaque-dir/kept" in members
    assert not [n for n in members if ".wh..wh.plnk" in n or n.startswith((".wh..wh.aufs",
                                                                         ".wh..wh.orph"))]
    names = list(members)
    assert names.index("opaque-dir/.wh..wh..opq") == names.index("opaque-dir") + 1


@needs_root
def test_overlay_whiteouts_give_the_same_member_names(tmp_path: Path) -> None:
    aufs_names = [m.name for m in read_members(
        export_layer(str(build_layer(tmp_path / "a", fmt="aufs").root)))]
    ovl = build_layer(tmp_path / "o", fmt="overlay").root
    assert stat.S_ISCHR(os.lstat(ovl / "gone").st_mode)
    assert os.getxattr(ovl / "opaque-dir", OVERLAY_OPAQUE_XATTR) == b"y"
    ovl_members = by_name(read_members(export_layer(str(ovl))))
    assert list(ovl_members) == aufs_names
    assert ovl_members[".wh.gone"].isreg() and ovl_members[".wh.gone"].size == 0
    # the opaque xattr itself never travels
    assert OVERLAY_OPAQUE_XATTR not in str(ovl_members["opaque-dir"].pax_headers)


def test_regular_files_modes_and_times(layer: Layer) -> None:
    m = by_name(read_members(export_layer(str(layer.root))))
    su = m["usr/bin/su"]
    assert su.isreg() and su.size == 1004 and su.mode == 0o4755 and su.mtime == MTIME
    assert m["usr/bin/wall"].mode == 0o2711
    assert m["tmp"].isdir() and m["tmp"].mode == 0o1777
    assert m["etc/passwd"].size == len("root:x:0:0::/root:/bin/sh\n")
    assert m["usr/fifo"].isfifo() and m["usr/fifo"].mode == 0o640
    assert m["usr/rel-link"].issym() and m["usr/rel-link"].linkname == "../lib/h1"
    assert m["usr/abs-link"].linkname == "/etc/passwd"
    assert m["usr/long-link"].linkname == LONG_TARGET
    assert m[LONG_NAME].isreg() and m[LONG_NAME].size == len(b"long name")
    assert m[RAW_NAME].size == 3
    assert m["usr/xattr-file"].pax_headers["SCHILY.xattr.user.comment"].encode(
        "utf-8", "surrogateescape") == b"hello\x00world"
    for info in m.values():
        assert info.uname == "" and info.gname == ""


def test_hard_links_first_stored_then_linked(layer: Layer) -> None:
    members = read_members(export_layer(str(layer.root)))
    m = by_name(members)
    assert m["lib/h1"].isreg() and m["lib/h1"].size == len(b"linked content")
    for later in ("lib/h2", "usr/h3"):
        assert m[later].islnk() and m[later].linkname == "lib/h1" and m[later].size == 0
    names = [x.name for x in members]
    assert names.index("lib/h1") < names.index("lib/h2") < names.index("usr/h3")


def test_file_contents(layer: Layer) -> None:
    data = tar_bytes(layer.root)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name, content in [("lib/h1", b"linked content"),
                              ("usr/bin/su", b"\x7fELF" + bytes(1000)),
                              (LONG_NAME, b"long name")]:
            f = tar.extractfile(name)
            assert f is not None and f.read() == content


@needs_root
def test_ownership_devices_and_xattrs(layer: Layer) -> None:
    m = by_name(read_members(export_layer(str(layer.root))))
    assert (m["etc/passwd"].uid, m["etc/passwd"].gid) == (1234, 5678)
    assert (m["usr/rel-link"].uid, m["usr/rel-link"].gid) == (42, 43)
    assert m["usr/bin/wall"].gid == 3000000
    null, loop, big = m["usr/null"], m["usr/loop9"], m["usr/bigdev"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3) and null.mode == 0o666
    assert loop.isblk() and (loop.devmajor, loop.devminor) == (7, 9)
    assert (big.devmajor, big.devminor) == (4095, 1048575)
    su = m["usr/bin/su"].pax_headers
    assert su["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP_V2
    xf = m["usr/xattr-file"].pax_headers
    assert xf["SCHILY.xattr.trusted.custom"] == "t"
    assert not [k for k in xf if "overlay" in k]


def test_sockets_are_left_out(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "s"
    root.mkdir()
    (root / "a").write_text("a")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        names = [m.name for m in read_members(export_layer(str(root)))]
    assert names == ["a"]


def test_capability_v3_becomes_v2() -> None:
    v3 = (0x03000001).to_bytes(4, "little") + bytes(16) + (1000).to_bytes(4, "little")
    out = _capability_v2(v3)
    assert len(out) == 20 and out[3] == 2 and out[:3] == v3[:3] and out[4:] == v3[4:20]
    assert _capability_v2(CAP_V2) == CAP_V2


def _gnu_listing(data: bytes) -> list[str]:
    out = subprocess.run(["tar", "--numeric-owner", "-tvf", "-"], input=data,
                         capture_output=True, check=True)
    return os.fsdecode(out.stdout).splitlines()


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_reads_it(layer: Layer) -> None:
    lines = _gnu_listing(tar_bytes(layer.root))
    line = {ln.split()[-1] if " -> " not in ln and " link to " not in ln
            else ln.split(" -> ")[0].split(" link to ")[0].split()[-1]: ln for ln in lines}
    assert line["usr/bin/su"].startswith("-rwsr-xr-x")
    assert line["usr/bin/wall"].startswith("-rwx--s--x")
    assert line["tmp/"].startswith("drwxrwxrwt")
    assert line["usr/fifo"].startswith("prw-r-----")
    assert line["usr/rel-link"].startswith("lrwxrwxrwx") and "-> ../lib/h1" in line["usr/rel-link"]
    assert "link to lib/h1" in line["lib/h2"]
    assert LONG_NAME in line
    assert f"-> {LONG_TARGET}" in line["usr/long-link"]
    if ROOT:
        assert line["etc/passwd"].split()[1] == "1234/5678"
        assert line["usr/null"].startswith("crw-rw-rw-") and "1,3" in line["usr/null"]
        assert line["usr/loop9"].startswith("brw-rw----")


@pytest.mark.skipif(shutil.which("bsdtar") is None, reason="bsdtar not installed")
def test_bsdtar_reads_it(layer: Layer) -> None:
    out = subprocess.run(["bsdtar", "-tvf", "-"], input=tar_bytes(layer.root),
                         capture_output=True, check=True)
    text = os.fsdecode(out.stdout)
    assert "-rwsr-xr-x" in text and "drwxrwxrwt" in text
    assert "lib/h2 link to lib/h1" in text
    assert f"usr/long-link -> {LONG_TARGET}" in text
    assert LONG_NAME in text
    assert out.stderr == b""


@pytest.mark.skipif(shutil.which("tar") is None or shutil.which("bsdtar") is None,
                    reason="GNU tar and bsdtar needed")
@pytest.mark.parametrize("tool", ["gnu", "bsd"])
def test_extracted_by_tar_tools_with_xattrs(layer: Layer, tmp_path: Path, tool: str) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    if tool == "gnu":
        cmd = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-",
               "-C", str(dest)]
    else:
        cmd = ["bsdtar", "--numeric-owner", "-xpf", "-", "-C", str(dest)]
    subprocess.run(cmd, input=tar_bytes(layer.root), check=True, capture_output=True)
    assert os.getxattr(dest / "usr" / "xattr-file", "user.comment") == b"hello\x00world"
    assert (dest / "lib" / "h2").read_bytes() == b"linked content"
    assert os.stat(dest / "lib" / "h2").st_ino == os.stat(dest / "lib" / "h1").st_ino
    assert stat.S_IMODE(os.stat(dest / "usr" / "bin" / "su").st_mode) == 0o4755
    assert os.readlink(dest / "usr" / "long-link") == LONG_TARGET
    assert os.stat(dest / "etc" / "passwd").st_mtime == MTIME
    if ROOT:
        assert os.getxattr(dest / "usr" / "bin" / "su", "security.capability") == CAP_V2
        assert os.stat(dest / "etc" / "passwd").st_uid == 1234


def test_stream_is_a_binary_file(layer: Layer) -> None:
    whole = tar_bytes(layer.root)
    assert len(whole) % 512 == 0 and whole.endswith(bytes(1024))
    with export_layer(str(layer.root)) as stream:
        assert stream.readable()
        parts = []
        while chunk := stream.read(777):
            parts.append(chunk)
    assert b"".join(parts) == whole
    assert stream.closed
    with pytest.raises(ValueError):
        stream.read(1)


def test_on_close_runs_once_and_fds_are_released(layer: Layer) -> None:
    before = set(os.listdir("/proc/self/fd"))
    calls: list[str] = []
    stream = export_layer(str(layer.root), on_close=[lambda: calls.append("put")])
    stream.read(10)  # mid-walk: directory and file fds are open now
    stream.close()
    stream.close()
    assert calls == ["put"]
    assert set(os.listdir("/proc/self/fd")) == before
    unread = export_layer(str(layer.root), on_close=[lambda: calls.append("unread")])
    unread.close()
    assert calls == ["put", "unread"]
    assert set(os.listdir("/proc/self/fd")) == before


def test_missing_directory_raises_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        export_layer(str(tmp_path / "nope"))


def test_file_shrinking_while_read_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    (root / "big").write_bytes(b"x" * 300_000)
    with export_layer(str(root)) as stream:
        assert stream.read(600)[:3] == b"big"
        os.truncate(root / "big", 1000)
        with pytest.raises(ArchiveError, match="shrank"):
            stream.read()


def test_empty_layer_is_an_empty_archive(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert tar_bytes(root) == bytes(1024)


def test_hard_linked_whiteouts_stay_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    (root / ".wh..wh.aufs").write_bytes(b"")  # AUFS links its whiteouts to this base
    os.link(root / ".wh..wh.aufs", root / ".wh.a")
    os.link(root / ".wh..wh.aufs", root / ".wh.b")
    members = read_members(export_layer(str(root)))
    assert [(m.name, m.isreg(), m.size) for m in members] == [(".wh.a", True, 0),
                                                               (".wh.b", True, 0)]


@needs_root
def test_xattrs_of_directories_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "l"
    (root / "dir").mkdir(parents=True)
    os.setxattr(root / "dir", "user.d", b"dir-value")
    os.symlink("target", root / "link")
    os.setxattr(root / "link", "trusted.l", b"link-value", follow_symlinks=False)
    m = by_name(read_members(export_layer(str(root))))
    assert m["dir"].pax_headers["SCHILY.xattr.user.d"] == "dir-value"
    assert m["link"].pax_headers["SCHILY.xattr.trusted.l"] == "link-value"


def test_an_entry_replaced_by_a_symlink_is_archived_as_the_symlink(tmp_path: Path) -> None:
    from aufs.archive.entries import Members

    root = tmp_path / "l"
    root.mkdir()
    os.symlink("/etc/shadow", root / "was-a-file")  # listed as a file, now a symlink
    (root / "was-a-dir").symlink_to("/etc")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        members = Members()
        member = members.regular(fd, "was-a-file", b"was-a-file")
        assert member is not None and member[1] == -1  # no data fd: nothing was opened
        assert members.directory(fd, "was-a-dir", b"was-a-dir/") is None
        assert members.regular(fd, "vanished", b"vanished") is None
    finally:
        os.close(fd)
    with tarfile.open(fileobj=io.BytesIO(member[0] + bytes(1024))) as tar:
        info = tar.getmembers()[0]
    assert info.issym() and info.linkname == "/etc/shadow"


def _many_files(root: Path, dirs: int = 6, per_dir: int = 30) -> None:
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"f{f:02d}").write_bytes(b"%d/%d\n" % (d, f) * (f + 1))


@pytest.fixture
def files_read_by_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """No batches: every file is its own member, read (ahead) by the stream."""
    from aufs.archive import export

    monkeypatch.setattr(export, "_INLINE_MAX", -1)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.usefixtures("files_read_by_the_stream")
def test_read_ahead_keeps_the_order_and_bounds_open_files(tmp_path: Path) -> None:
    from aufs.archive.export import _walk_tree
    from aufs.archive.stream import ReadAhead

    root = tmp_path / "l"
    _many_files(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        plain = []
        for hdr, data_fd, size, _ in _walk_tree(fd):
            plain.append((hdr, size))
            if data_fd >= 0:
                os.close(data_fd)
        base = _open_fds()
        ahead = ReadAhead(_walk_tree(fd), files=8, size=1 << 30)
        seen, most = [], 0
        for hdr, data_fd, size, _ in ahead:
            most = max(most, _open_fds() - base)
            seen.append((hdr, size))
            if data_fd >= 0:
                assert os.pread(data_fd, 2, 0)[:1].isdigit()
                os.close(data_fd)
        assert seen == plain and len(seen) == 6 + 6 * 30
        # 8 queued files + the one handed out + the walk's directory fd (+1 for listdir)
        assert 8 <= most <= 8 + 1 + 2
    finally:
        os.close(fd)


@pytest.mark.parametrize("size, most", [(250, 3), (1 << 30, 40)])
@pytest.mark.usefixtures("files_read_by_the_stream")
def test_read_ahead_bounds_the_bytes_queued(tmp_path: Path, size: int, most: int) -> None:
    """40 files of 100 bytes: with a 250-byte bound, at most 3 are open at a time, the
    one handed out and those queued (the queue fills until it holds 250 bytes or more);
    unbounded, all 40 (the control)."""
    from aufs.archive.export import _walk_tree
    from aufs.archive.stream import ReadAhead

    root = tmp_path / "l"
    root.mkdir()
    for i in range(40):
        (root / f"f{i:02d}").write_bytes(b"x" * 100)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    base = _open_fds()
    try:
        ahead = ReadAhead(_walk_tree(fd), files=100, size=size)
        held, files = [], 0
        for _, data_fd, _, _ in ahead:
            if data_fd >= 0:
                files += 1
                held.append(1 + sum(1 for m in ahead._queue if m[1] >= 0))  # + queued
                os.close(data_fd)
        ahead.close()
        assert files == 40 and max(held) == most
        assert _open_fds() == base
    finally:
        os.close(fd)


@pytest.mark.parametrize("bound", [None, 1 << 40])
def test_read_ahead_bounds_the_headers_queued_behind_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int | None) -> None:
    """One open file, then 20,000 members without a file (symlinks, directories: a
    header each): the queue stops at AHEAD_MEMBERS, not at the end of the layer — a
    diff of 300,000 symlinks behind one file peaked at 241 MiB. Unbounded (the
    control), every member is pulled before the first is handed out."""
    from aufs.archive import stream as stream_mod

    if bound is not None:
        monkeypatch.setattr(stream_mod, "AHEAD_MEMBERS", bound)
    data = tmp_path / "f"
    data.write_bytes(b"x" * 100)
    pulled = 0

    def members() -> Iterator[stream_mod.Member]:
        nonlocal pulled
        pulled += 1
        yield b"H" * 512, os.open(data, os.O_RDONLY), 100, False
        for _ in range(20_000):
            pulled += 1
            yield b"h" * 512, -1, 0, False

    ahead = stream_mod.ReadAhead(members())
    first = next(ahead)
    os.close(first[1])
    if bound is None:
        assert pulled <= stream_mod.AHEAD_MEMBERS + 1
    else:
        assert pulled == 20_001
    assert sum(1 for _ in ahead) == 20_000  # and nothing is lost
    ahead.close()


@pytest.mark.usefixtures("files_read_by_the_stream")
def test_read_ahead_closes_queued_files_when_the_stream_is_closed(tmp_path: Path) -> None:
    root = tmp_path / "l"
    _many_files(root)
    before = _open_fds()
    stream = export_layer(str(root))
    stream.read(1000)
    assert _open_fds() > before + 30  # files opened ahead of the reader
    stream.close()
    assert _open_fds() == before


@pytest.mark.usefixtures("files_read_by_the_stream")
def test_read_ahead_hints_until_warm_and_again_after_a_wait(tmp_path: Path) -> None:
    from aufs.archive.export import _walk_tree
    from aufs.archive.stream import ReadAhead

    root = tmp_path / "l"
    _many_files(root, dirs=2, per_dir=40)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ahead = ReadAhead(_walk_tree(fd), files=4, warm=10)
        advising = []
        for _, data_fd, _, _ in ahead:
            advising.append(ahead._advise)
            if data_fd >= 0:
                os.close(data_fd)
            if len(advising) == 40:
                ahead.missed()  # a read waited for the disk
        assert advising[:5] == [True] * 5
        assert advising[20:40] == [False] * 20  # more than WARM files read without waiting
        assert advising[40] is True  # hinting again
        assert advising[-1] is False  # and warm again later
    finally:
        os.close(fd)


def test_stream_bytes_do_not_depend_on_read_ahead(tmp_path: Path) -> None:
    import functools

    from aufs.archive import stream as stream_mod

    root = tmp_path / "l"
    _many_files(root)
    with export_layer(str(root)) as s:
        with_ahead = s.read()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_mod, "ReadAhead", functools.partial(stream_mod.ReadAhead, files=0))
        with export_layer(str(root)) as s:
            serial = s.read()
    assert with_ahead == serial and len(serial) > 180 * 512


def test_read_ahead_fits_a_low_fd_limit(tmp_path: Path) -> None:
    import sys

    root = tmp_path / "l"
    _many_files(root, dirs=3, per_dir=100)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))\n"
        "from aufs.archive.export import export_layer\n"
        "with export_layer(sys.argv[1]) as s:\n"
        "    print(len(s.read()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 300 * 512


def _evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (written back first: DONTNEED drops only
    clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _skip_unless_evicted(path: Path) -> None:
    """Skip the test unless a read of ``path`` with ``RWF_NOWAIT`` would wait: the
    filesystem can tell, and :func:`_evict` worked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        pytest.skip("pages stay cached here after POSIX_FADV_DONTNEED (tmpfs?)")
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        pytest.skip("this filesystem cannot read with RWF_NOWAIT")
    finally:
        os.close(fd)


def test_a_read_that_would_wait_turns_the_hints_back_on(tmp_path: Path) -> None:
    """The export reads with ``RWF_NOWAIT`` first: a file evicted from the page cache
    makes that read fail, and the read-ahead hears of it (``missed``) and hints again;
    the bytes are the same either way. Hinting is off after the first file (``warm=0``),
    so no hint brings the second file in before its read."""
    import functools

    from aufs.archive import stream as stream_mod

    root = tmp_path / "l"
    root.mkdir()
    for i in range(8):
        (root / f"f{i}").write_bytes(os.urandom(64 << 10))

    def evict_all() -> None:
        for i in range(8):
            _evict(root / f"f{i}")

    evict_all()
    _skip_unless_evicted(root / "f0")
    misses: list[bool] = []  # each miss: hinting on again right after it?
    real_missed = stream_mod.ReadAhead.missed

    def missed(self: stream_mod.ReadAhead) -> None:
        real_missed(self)
        misses.append(self._advise)

    def export() -> bytes:
        with export_layer(str(root)) as s:
            return s.read()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_mod.ReadAhead, "missed", missed)
        mp.setattr(stream_mod, "ReadAhead",
                   functools.partial(stream_mod.ReadAhead, files=0, warm=0))
        export()  # reads the files in
        misses.clear()
        warm = export()
        assert misses == []  # all cached: no read waited
        evict_all()
        cold = export()
    assert cold == warm
    assert misses and all(misses)  # reads waited, and each miss turned the hints back on


def _small_files_layer(root: Path) -> None:
    """Small files across several batches, between members that never go in one: a big
    file, one just over the inline size, a hard link pair, xattrs, a long name, an empty
    file, directories; symlinks, in a batch or not: plain ones (a target of 100 bytes
    exactly), and a long target, a long name, a hard-linked one, one with an xattr."""
    for d in range(3):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(120):
            (sub / f"f{f:03d}").write_bytes(b"%d/%d\n" % (d, f) * (f * 7 % 150))
            os.utime(sub / f"f{f:03d}", (MTIME, MTIME + f))
        (sub / "f050-big").write_bytes(os.urandom(200_000))
        (sub / "f060-over").write_bytes(b"o" * ((8 << 10) + 1))
        (sub / "f070-empty").write_bytes(b"")
        os.link(sub / "f080", sub / "f080-link")
        os.setxattr(sub / "f090", "user.note", b"kept")
        os.symlink("f001", sub / "f100-sym")
        os.symlink("t" * 100, sub / "f101-sym-100")
        os.symlink("t" * 101, sub / "f102-sym-long-target")
        os.symlink("f001", sub / ("s" * 101))
        os.symlink("f002", sub / "f103-sym-linked")
        os.link(sub / "f103-sym-linked", sub / "f104-sym-link", follow_symlinks=False)
        os.symlink("f003", sub / "f105-sym-xattr")
        os.setxattr(sub / "f105-sym-xattr", "trusted.note", b"kept", follow_symlinks=False)
        os.lchown(sub / "f101-sym-100", 1000 + d, 2000)
        (sub / ("n" * 120)).write_bytes(b"long name")
        (sub / "f110-dir").mkdir()


def _batches(root: Path) -> int:
    from aufs.archive.export import _walk_tree

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        batches = 0
        for _, data_fd, size, _ in _walk_tree(fd):
            if data_fd >= 0:
                os.close(data_fd)
            elif size:
                batches += 1
        return batches
    finally:
        os.close(fd)


def test_small_files_in_batches_give_the_same_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk reads small cached files itself, many whole members to a batch: the
    stream is the same bytes as with every file its own member, read whole, in small
    pieces, or written into a pipe."""
    from aufs.archive import export
    from aufs.archive.stream import write_stream

    root = tmp_path / "l"
    _small_files_layer(root)
    if not _batches(root):
        pytest.skip("this filesystem cannot read with RWF_NOWAIT: no batches")
    assert _batches(root) >= 6  # 3 directories of more than 64 KiB of small files

    def ways() -> tuple[bytes, bytes, bytes]:
        whole = tar_bytes(root)
        with export_layer(str(root)) as s:
            pieces = b"".join(iter(lambda: s.read(700), b""))
        r, w = os.pipe()
        with export_layer(str(root)) as s, open(r, "rb") as reader:
            out = io.BytesIO()
            t = threading.Thread(target=lambda: out.write(reader.read()))
            t.start()
            try:
                write_stream(s, w)
            finally:
                os.close(w)
            t.join()
        return whole, pieces, out.getvalue()

    batched = ways()
    monkeypatch.setattr(export, "_INLINE_MAX", -1)
    assert _batches(root) == 0
    one_by_one = ways()
    assert batched == one_by_one
    assert len(set(batched)) == 1
    names = [m.name for m in read_members(io.BytesIO(batched[0]))]
    assert len(names) == 3 * (1 + 120 + 13) and names[:2] == ["d0", "d0/f000"]
    links = {m.name: m for m in read_members(io.BytesIO(batched[0])) if m.issym() or m.islnk()}
    assert links["d1/f101-sym-100"].linkname == "t" * 100
    assert links["d1/f101-sym-100"].uid == 1001
    assert links["d1/f102-sym-long-target"].linkname == "t" * 101
    assert links["d1/" + "s" * 101].linkname == "f001"
    assert links["d1/f104-sym-link"].islnk()  # the second name of the linked symlink
    assert links["d1/f105-sym-xattr"].pax_headers["SCHILY.xattr.trusted.note"] == "kept"


def test_entries_in_batches_are_counted_each(tmp_path: Path) -> None:
    from aufs.observe import counting_entries

    root = tmp_path / "l"
    _small_files_layer(root)
    calls: list[None] = []
    with counting_entries(lambda: calls.append(None)):
        data = tar_bytes(root)
    assert len(calls) == len(read_members(io.BytesIO(data))) == 3 * 134


def test_small_files_not_cached_are_read_by_the_stream(tmp_path: Path) -> None:
    """Evicted from the page cache, small files are not read by the walk (that would wait
    for the disk one file at a time): they go as their own members, read ahead; same
    bytes."""
    root = tmp_path / "l"
    _small_files_layer(root)
    warm = tar_bytes(root)
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            _evict(p)
    _skip_unless_evicted(root / "d2" / "f119")
    assert tar_bytes(root) == warm
