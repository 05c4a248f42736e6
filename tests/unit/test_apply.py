"""Extraction of layer tars into a plain directory (aufs.archive.apply.extract): tars
made by GNU tar, bsdtar and Python's tarfile, whiteouts, opaque dirs, AUFS pseudo-links,
directory times, strict end of archive."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from aufs.archive import ArchiveError
from aufs.archive.apply import extract, extract_into_dir
from aufs.whiteout import (
    AUFS,
    OVERLAY,
    WH_META_PREFIX,
    WH_OPAQUE,
    WH_PLINK,
    WH_PREFIX,
    WhiteoutFormat,
)
from tests.safety.snapshot import snapshot


def build_source(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"data" * 5000)
    os.link(root / "dir" / "file", root / "dir" / "sub" / "hard")
    os.symlink("/absolute/target", root / "dir" / "abs")
    os.symlink("../file", root / "dir" / "sub" / "rel")
    os.mkfifo(root / "dir" / "fifo", 0o600)
    os.mknod(root / "dir" / "tty", 0o620 | stat.S_IFCHR, os.makedev(4, 1))
    os.mknod(root / "dir" / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 3))
    (root / "suid").write_bytes(b"x")
    os.chown(root / "suid", 0, 42)
    os.chmod(root / "suid", 0o6755)
    os.chown(root / "dir" / "sub", 1000, 1001)
    os.chmod(root / "dir" / "sub", 0o1777)
    os.lchown(root / "dir" / "abs", 3, 4)
    os.setxattr(root / "dir" / "file", "user.k", b"v")
    deep = root / "l" / ("n" * 100) / ("m" * 100)
    deep.mkdir(parents=True)
    (deep / ("f" * 150)).write_bytes(b"long")
    for path, t in ((root / "dir" / "file", 1_000_000_001), (root / "dir" / "sub", 1_000_000_002),
                    (root / "dir", 1_000_000_003), (deep, 1_000_000_004)):
        os.utime(path, (t, t))


def extract_bytes(target: Path, data: bytes, whiteouts: WhiteoutFormat | None = AUFS) -> None:
    extract_into_dir(str(target), io.BytesIO(data), whiteouts)


def _without_root(snap: dict[str, tuple[object, ...]], xattrs: bool = True) -> dict[str, object]:
    snap.pop(".", None)
    return {k: (v if xattrs else v[:-1]) for k, v in snap.items()}


TOOLS: dict[str, Callable[[Path], bytes]] = {
    "gnu-tar": lambda src: subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(src), "-cf", "-",
         "."], check=True, capture_output=True).stdout,
    "gnu-tar-posix": lambda src: subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C",
         str(src), "-cf", "-", "."], check=True, capture_output=True).stdout,
    "bsdtar": lambda src: subprocess.run(
        ["bsdtar", "--xattrs", "--numeric-owner", "-C", str(src), "-cf", "-", "."],
        check=True, capture_output=True).stdout,
    "gnu-tar-gzip": lambda src: subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-C", str(src), "-czf", "-", "."],
        check=True, capture_output=True).stdout,
    "bsdtar-xz": lambda src: subprocess.run(
        ["bsdtar", "--xattrs", "-J", "-C", str(src), "-cf", "-", "."],
        check=True, capture_output=True).stdout,
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tars_from_other_tools(tmp_path: Path, tool: str) -> None:
    if shutil.which(tool.split("-")[0] if tool.startswith("bsd") else "tar") is None:
        pytest.skip(f"{tool} not installed")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    build_source(src)
    extract_bytes(dst, TOOLS[tool](src))
    assert _without_root(snapshot(str(dst))) == _without_root(snapshot(str(src)))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_python_tarfile(tmp_path: Path, fmt: int, mode: Literal["w", "w:gz", "w:bz2", "w:xz"]
                        ) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    build_source(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        tf.add(src, arcname=".")
    extract_bytes(dst, buf.getvalue())
    # tarfile.add stores no xattrs
    assert _without_root(snapshot(str(dst)), xattrs=False) == _without_root(
        snapshot(str(src)), xattrs=False)


def _tar(entries: list[tuple[str, bytes | str | None, int]], *, pax: dict[str, str] | None = None
         ) -> bytes:
    """entries: (name, data (bytes: file, str: link target, None: dir), mtime)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, mtime in entries:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.LNKTYPE, data
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                if pax:
                    info.pax_headers = dict(pax)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [AUFS, OVERLAY, None], ids=["aufs", "overlay", "remove-only"])
def test_opaque_keeps_what_this_archive_wrote(tmp_path: Path, fmt: WhiteoutFormat | None
                                              ) -> None:
    (tmp_path / "d" / "old-dir").mkdir(parents=True)
    (tmp_path / "d" / "old-dir" / "x").write_text("x")
    (tmp_path / "d" / "old").write_text("old")
    (tmp_path / "d" / "kept-dir").mkdir()
    (tmp_path / "d" / "kept-dir" / "old-inside").write_text("x")
    (tmp_path / "other").write_text("other")
    extract_bytes(tmp_path, _tar([
        ("d", None, 1), ("d/new", b"new", 1), ("d/kept-dir", None, 1),
        (f"d/{WH_OPAQUE}", b"", 1), ("d/after", b"after", 1)]), fmt)
    names = set(os.listdir(tmp_path / "d"))
    expected = {"new", "after", "kept-dir"} | ({WH_OPAQUE} if fmt is AUFS else set())
    assert names == expected
    assert os.listdir(tmp_path / "d" / "kept-dir") == []  # not written by the archive
    assert (tmp_path / "other").exists()
    if fmt is OVERLAY:
        assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"


@pytest.mark.parametrize("fmt", [AUFS, OVERLAY, None], ids=["aufs", "overlay", "remove-only"])
def test_whiteout_removes_and_marks(tmp_path: Path, fmt: WhiteoutFormat | None) -> None:
    (tmp_path / "gone-dir" / "deep").mkdir(parents=True)
    (tmp_path / "gone").write_text("x")
    extract_bytes(tmp_path, _tar([(f"{WH_PREFIX}gone", b"", 1),
                                  (f"{WH_PREFIX}gone-dir", b"", 1),
                                  (f"new/{WH_PREFIX}never-there", b"", 1)]), fmt)
    if fmt is None:
        assert sorted(os.listdir(tmp_path)) == ["new"]
        return
    for name in ("gone", "gone-dir", "new/never-there"):
        head, _, base = name.rpartition("/")
        path = tmp_path / head / fmt.whiteout_path_name(base)
        st = os.lstat(path)
        assert stat.S_ISCHR(st.st_mode) if fmt is OVERLAY else stat.S_ISREG(st.st_mode)
    if fmt is AUFS:
        assert not (tmp_path / "gone").exists() and not (tmp_path / "gone-dir").exists()


def test_aufs_pseudo_links(tmp_path: Path) -> None:
    plnk = f"{WH_PLINK}/1234.5678"
    extract_bytes(tmp_path, _tar([(plnk, b"shared", 5), ("a", plnk, 5), ("d/b", plnk, 5),
                                  (f"{WH_META_PREFIX}aufs", b"", 5)]))
    a, b = os.lstat(tmp_path / "a"), os.lstat(tmp_path / "d" / "b")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert (tmp_path / "a").read_bytes() == b"shared"
    assert sorted(os.listdir(tmp_path)) == ["a", "d"]


def test_unknown_pseudo_link_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        extract_bytes(tmp_path, _tar([("a", f"{WH_PLINK}/nope", 5)]))


def test_directory_times_are_set_last(tmp_path: Path) -> None:
    extract_bytes(tmp_path, _tar([("d", None, 1_111), ("d/e", None, 2_222), ("d/e/f", b"f", 3),
                                  ("d/g", b"g", 4)]))
    assert os.stat(tmp_path / "d").st_mtime == 1_111
    assert os.stat(tmp_path / "d" / "e").st_mtime == 2_222


def test_missing_parents_are_made(tmp_path: Path) -> None:
    extract_bytes(tmp_path, _tar([("a/b/c/f", b"f", 3)]))
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o755
    assert (tmp_path / "a" / "b" / "c" / "f").read_bytes() == b"f"


def test_overlay_xattrs_in_the_tar_are_ignored(tmp_path: Path) -> None:
    extract_bytes(tmp_path, _tar([("f", b"f", 3)], pax={
        "SCHILY.xattr.trusted.overlay.origin": "x", "SCHILY.xattr.user.ok": "yes"}))
    assert os.listxattr(tmp_path / "f") == ["user.ok"]


def test_precise_pax_mtime(tmp_path: Path) -> None:
    data = _tar([("f", b"f", 0)], pax={"mtime": "1234567890.123456789"})
    extract_bytes(tmp_path, data)
    assert os.stat(tmp_path / "f").st_mtime_ns == 1234567890_123456789


def test_file_is_replaced_not_rewritten(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("old")
    os.link(tmp_path / "f", tmp_path / "other-name")
    extract_bytes(tmp_path, _tar([("f", b"new", 3)]))
    assert (tmp_path / "f").read_text() == "new"
    assert (tmp_path / "other-name").read_text() == "old"


def test_root_entry_sets_root_metadata(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("./")
        info.type, info.mode, info.mtime, info.uid = tarfile.DIRTYPE, 0o710, 77, 5
        tf.addfile(info)
    extract_bytes(target, buf.getvalue())
    st = os.stat(target)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime, st.st_uid) == (0o710, 77, 5)


def test_empty_stream_is_an_empty_layer(tmp_path: Path) -> None:
    extract_bytes(tmp_path, b"")
    assert os.listdir(tmp_path) == []


def test_missing_end_marker_is_truncation(tmp_path: Path) -> None:
    data = _tar([("a", b"a" * 600, 1)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        end = tf.getmembers()[-1].offset_data + 1024
    with pytest.raises(ArchiveError):
        extract_bytes(tmp_path, data[:end])


def test_garbage_header_is_an_error(tmp_path: Path) -> None:
    data = bytearray(_tar([("a", b"a" * 600, 1), ("b", b"b", 1)]))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        second = tf.getmembers()[1].offset
    data[second:second + 100] = b"\xff" * 100
    with pytest.raises(ArchiveError):
        extract_bytes(tmp_path, bytes(data))


def test_extract_into_an_open_directory_fd(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        extract(fd, io.BytesIO(_tar([("x", b"x", 1)])), None)
    finally:
        os.close(fd)
    assert (tmp_path / "x").read_bytes() == b"x"


def test_refused_xattrs_are_skipped(tmp_path: Path) -> None:
    extract_bytes(tmp_path, _tar([("f", b"f", 3)], pax={
        "SCHILY.xattr.nonamespace.x": "1", "SCHILY.xattr.user.ok": "yes"}))
    assert os.listxattr(tmp_path / "f") == ["user.ok"]


def test_unusable_name_is_an_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        extract_bytes(tmp_path, _tar([("x" * 300, b"f", 3)]))


def test_file_where_a_directory_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        extract_bytes(tmp_path, _tar([("a", b"file", 3), ("a/b", b"f", 3)]))


def test_many_directories_keep_few_fds_open(tmp_path: Path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    entries: list[tuple[str, bytes | str | None, int]] = []
    for i in range(300):
        entries += [(f"d{i}", None, 5), (f"d{i}/sub", None, 6), (f"d{i}/sub/f", b"f", 7)]
    entries.append((WH_OPAQUE, b"", 1))  # an opaque root at the end: prunes nothing written
    data = _tar(entries)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        extract_bytes(tmp_path, data)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(os.listdir(tmp_path)) == 301
    assert os.stat(tmp_path / "d299" / "sub").st_mtime == 6


def test_new_entry_drops_its_aufs_whiteout(tmp_path: Path) -> None:
    (tmp_path / f"{WH_PREFIX}back").write_text("")
    (tmp_path / f"{WH_PREFIX}still-gone").write_text("")
    extract_bytes(tmp_path, _tar([("back", b"again", 3), (f"{WH_PREFIX}later", b"", 3),
                                  ("later", b"back too", 3)]))
    assert sorted(os.listdir(tmp_path)) == sorted(["back", "later", f"{WH_PREFIX}still-gone"])
