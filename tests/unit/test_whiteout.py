"""Whiteouts in both formats: classification, writing, and normalize() both ways, on plain dirs.

Overlay whiteouts are 0:0 character devices and ``trusted.*`` xattrs: writing them needs
root (CAP_MKNOD, CAP_SYS_ADMIN); those cases are skipped without it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aufs._sys import libc
from aufs.whiteout import (
    AUFS,
    OVERLAY,
    OVERLAY_OPAQUE_XATTR,
    WH_OPAQUE,
    Kind,
    WhiteoutFormat,
    classify,
    classify_entry,
    classify_name,
    get_format,
    has_opaque_xattr,
    is_export_xattr,
    is_opaque,
    root_is_opaque,
    wh_file_target,
    whiteout_tar_mode,
)
from tests.reliability import loopfs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts need root")


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [
        ("a", Kind.PLAIN, ""),
        (".a", Kind.PLAIN, ""),
        (".whx", Kind.PLAIN, ""),
        ("wh.a", Kind.PLAIN, ""),
        (".wh.a", Kind.WHITEOUT, "a"),
        (".wh..hidden", Kind.WHITEOUT, ".hidden"),
        (".wh..wh", Kind.WHITEOUT, ".wh"),
        (".wh.x.wh.y", Kind.WHITEOUT, "x.wh.y"),
        (".wh..wh..opq", Kind.OPAQUE, ""),
        (".wh..wh.plnk", Kind.HOUSEKEEPING, ""),
        (".wh..wh.aufs", Kind.HOUSEKEEPING, ""),
        (".wh..wh.orph", Kind.HOUSEKEEPING, ""),
        (".wh..wh.anything", Kind.HOUSEKEEPING, ""),
        (".wh..wh..opq2", Kind.HOUSEKEEPING, ""),
        (".wh.", Kind.WHITEOUT, ""),  # degenerate targets: their users refuse them
        (".wh..", Kind.WHITEOUT, "."),
        (".wh...", Kind.WHITEOUT, ".."),
    ],
)
def test_classify_name(name: str, kind: Kind, target: str) -> None:
    entry = classify_name(name)
    assert (entry.kind, entry.target) == (kind, target)
    assert classify(name, stat.S_IFREG | 0o644, 0) == entry


@pytest.mark.parametrize(
    ("name", "mode", "rdev", "kind", "target"),
    [
        ("a", stat.S_IFCHR, 0, Kind.WHITEOUT, "a"),
        ("a", stat.S_IFCHR | 0o600, 0, Kind.WHITEOUT, "a"),
        ("a", stat.S_IFCHR, os.makedev(1, 3), Kind.PLAIN, ""),  # /dev/null is content
        ("a", stat.S_IFBLK, 0, Kind.PLAIN, ""),
        ("a", stat.S_IFIFO, 0, Kind.PLAIN, ""),
        (".wh.a", stat.S_IFCHR, 0, Kind.HOUSEKEEPING, ""),
        (".wh..wh..opq", stat.S_IFCHR, 0, Kind.HOUSEKEEPING, ""),
        (".wh.a", stat.S_IFDIR, 0, Kind.WHITEOUT, "a"),
    ],
)
def test_classify_by_mode(name: str, mode: int, rdev: int, kind: Kind, target: str) -> None:
    entry = classify(name, mode, rdev)
    assert (entry.kind, entry.target) == (kind, target)


def _entries(path: Path) -> dict[str, tuple[Kind, str]]:
    with os.scandir(path) as it:
        return {e.name: (classify_entry(e).kind, classify_entry(e).target) for e in it}


def test_classify_entry_aufs_files(tmp_path: Path) -> None:
    for name in ("plain", ".wh.gone", WH_OPAQUE):
        (tmp_path / name).touch()
    (tmp_path / ".wh..wh.plnk").mkdir()
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(".wh.gone")
    os.mkfifo(tmp_path / "fifo")
    assert _entries(tmp_path) == {
        "plain": (Kind.PLAIN, ""), ".wh.gone": (Kind.WHITEOUT, "gone"),
        WH_OPAQUE: (Kind.OPAQUE, ""), ".wh..wh.plnk": (Kind.HOUSEKEEPING, ""),
        "dir": (Kind.PLAIN, ""), "link": (Kind.PLAIN, ""), "fifo": (Kind.PLAIN, ""),
    }


@needs_root
def test_classify_entry_overlay_devices(tmp_path: Path) -> None:
    os.mknod(tmp_path / "gone", stat.S_IFCHR | 0o600, 0)
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert _entries(tmp_path) == {"gone": (Kind.WHITEOUT, "gone"), "null": (Kind.PLAIN, "")}


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo", "whiteout-device",
                                  "null-device"])
@pytest.mark.parametrize("name", [".wh.a", ".wh..hidden", ".wh..wh", ".wh.", ".wh..",
                                  WH_OPAQUE, ".wh..wh.plnk", ".wh..wh..opq2"])
def test_wh_file_target_is_classify_entry_s_target(tmp_path: Path, kind: str,
                                                   name: str) -> None:
    """Change detection's shortcut for ``.wh.*`` entries says what classify_entry says."""
    path = tmp_path / name
    if kind == "file":
        path.touch()
    elif kind == "dir":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to("a")
    elif kind == "fifo":
        os.mkfifo(path)
    elif os.geteuid() != 0:
        pytest.skip("devices need root")
    else:
        os.mknod(path, stat.S_IFCHR | 0o600,
                 0 if kind == "whiteout-device" else os.makedev(1, 3))
    with os.scandir(tmp_path) as it:
        (entry,) = it
    expected = classify_entry(entry)
    assert wh_file_target(entry) == (expected.target if expected.kind is Kind.WHITEOUT
                                     else None)
    if kind == "whiteout-device" or name.startswith(".wh..wh."):
        assert wh_file_target(entry) is None
    else:
        assert wh_file_target(entry) == name[4:]


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_aufs_writes_wh_files(tmp_path: Path) -> None:
    with opened(tmp_path) as fd:
        AUFS.make_whiteout(fd, "gone", 0o640)
        assert not is_opaque(fd)
        AUFS.make_opaque(fd)
        assert is_opaque(fd) and is_opaque(fd, names=[WH_OPAQUE])
        AUFS.make_whiteout(fd, "gone")  # twice is fine
    st = (tmp_path / ".wh.gone").lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert (tmp_path / WH_OPAQUE).is_file()
    assert AUFS.whiteout_path_name("gone") == ".wh.gone"
    with opened(tmp_path) as fd:
        AUFS.clear_opaque(fd)
        AUFS.clear_opaque(fd)  # no marker: no error
        assert not is_opaque(fd, names=os.listdir(fd))
    assert sorted(os.listdir(tmp_path)) == [".wh.gone"]


@needs_root
def test_overlay_writes_devices_and_xattrs(tmp_path: Path) -> None:
    with opened(tmp_path) as fd:
        OVERLAY.make_whiteout(fd, "gone", 0o640)
        OVERLAY.make_opaque(fd)
        assert is_opaque(fd) and has_opaque_xattr(fd) and has_opaque_xattr(str(tmp_path))
    st = (tmp_path / "gone").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and stat.S_IMODE(st.st_mode) == 0o640
    assert os.getxattr(tmp_path, OVERLAY_OPAQUE_XATTR) == b"y"
    assert OVERLAY.whiteout_path_name("gone") == "gone"
    with opened(tmp_path) as fd:
        OVERLAY.clear_opaque(fd)
        assert not is_opaque(fd)


def test_formats_by_name() -> None:
    assert get_format("aufs") is AUFS and get_format("overlay") is OVERLAY
    assert isinstance(AUFS, WhiteoutFormat) and (AUFS.name, OVERLAY.name) == ("aufs", "overlay")
    with pytest.raises(ValueError, match="unknown whiteout format"):
        get_format("btrfs")


def test_overlay_xattrs_are_not_content() -> None:
    assert not is_export_xattr("trusted.overlay.opaque")
    assert not is_export_xattr("trusted.overlay.origin")
    assert is_export_xattr("user.mime_type") and is_export_xattr("security.capability")


# -- normalize(): one format into the other --------------------------------------------------


def tree(root: Path) -> dict[str, str]:
    """path -> f (file), d (dir, +"y" if overlay-opaque), c (0:0 device), l (symlink)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISCHR(st.st_mode):
                out[str(p.relative_to(root))] = f"c{st.st_rdev}"
            elif stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(root))] = "l"
            elif stat.S_ISDIR(st.st_mode):
                out[str(p.relative_to(root))] = "d" + ("y" if has_opaque_xattr(str(p)) else "")
            else:
                out[str(p.relative_to(root))] = "f"
    return out


def aufs_layer(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "keep").write_text("x")
    (root / "link").symlink_to("/nowhere")
    (root / ".wh.gone").touch()
    (root / ".wh..hidden").touch()
    (root / "d" / WH_OPAQUE).touch()
    (root / "d" / "new").write_text("n")
    (root / "d" / "sub" / ".wh.f").touch()
    (root / ".wh..wh.plnk").mkdir()  # AUFS housekeeping: never touched
    (root / ".wh..wh.plnk" / "123.456").touch()


OVERLAY_FORM = {
    "keep": "f", "link": "l", "gone": "c0", ".hidden": "c0", "d": "dy", "d/new": "f",
    "d/sub": "d", "d/sub/f": "c0", ".wh..wh.plnk": "d", ".wh..wh.plnk/123.456": "f",
}


@needs_root
def test_normalize_aufs_to_overlay_and_back(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    root.mkdir()
    aufs_layer(root)
    aufs_form = tree(root)
    assert OVERLAY.normalize(str(root)) == 4
    assert tree(root) == OVERLAY_FORM
    assert OVERLAY.normalize(str(root)) == 0  # idempotent
    assert AUFS.normalize(str(root)) == 4
    assert tree(root) == aufs_form
    assert AUFS.normalize(str(root)) == 0


def test_aufs_normalize_of_an_aufs_layer_changes_nothing(tmp_path: Path) -> None:
    aufs_layer(tmp_path)
    before = tree(tmp_path)
    assert AUFS.normalize(str(tmp_path)) == 0
    assert tree(tmp_path) == before


@needs_root
def test_normalize_keeps_whiteout_modes(tmp_path: Path) -> None:
    (tmp_path / ".wh.a").touch(mode=0o640)
    os.chmod(tmp_path / ".wh.a", 0o640)
    OVERLAY.normalize(str(tmp_path))
    assert stat.S_IMODE((tmp_path / "a").lstat().st_mode) == 0o640
    AUFS.normalize(str(tmp_path))
    assert stat.S_IMODE((tmp_path / ".wh.a").lstat().st_mode) == 0o640


@needs_root
def test_a_kernel_whiteout_becomes_a_0600_file(tmp_path: Path) -> None:
    """Kernel overlayfs makes whiteouts with mode 0; converted, they get 0600 — the mode
    a layer tar gives them (Docker's), so a diff says the same before and after."""
    os.mknod(tmp_path / "gone", stat.S_IFCHR, 0)
    assert stat.S_IMODE((tmp_path / "gone").lstat().st_mode) == 0
    AUFS.normalize(str(tmp_path))
    assert stat.S_IMODE((tmp_path / ".wh.gone").lstat().st_mode) == 0o600


@pytest.mark.parametrize(("mode", "expected"), [
    (stat.S_IFCHR, 0o600), (stat.S_IFCHR | 0o644, 0o644), (stat.S_IFREG | 0o400, 0o400),
    (stat.S_IFREG, 0o600), (stat.S_IFCHR | 0o4755, 0o4755)])
def test_whiteout_tar_mode(mode: int, expected: int) -> None:
    assert whiteout_tar_mode(mode) == expected


@needs_root
def test_normalize_finishes_after_a_crash(tmp_path: Path) -> None:
    """A kill between writing the new marker and removing the old one leaves both."""
    os.mknod(tmp_path / "gone", stat.S_IFCHR | 0o600, 0)
    (tmp_path / ".wh.gone").touch()
    os.setxattr(tmp_path, OVERLAY_OPAQUE_XATTR, b"y")
    (tmp_path / WH_OPAQUE).touch()
    AUFS.normalize(str(tmp_path))
    assert tree(tmp_path) == {".wh.gone": "f", WH_OPAQUE: "f"}
    os.setxattr(tmp_path, OVERLAY_OPAQUE_XATTR, b"y")
    os.mknod(tmp_path / "gone", stat.S_IFCHR | 0o600, 0)
    OVERLAY.normalize(str(tmp_path))
    assert tree(tmp_path) == {"gone": "c0"} and has_opaque_xattr(str(tmp_path))


@needs_root
def test_normalize_drops_fuse_overlayfs_bookkeeping_devices(tmp_path: Path) -> None:
    os.mknod(tmp_path / ".wh.x", stat.S_IFCHR | 0o600, 0)
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    AUFS.normalize(str(tmp_path))
    assert tree(tmp_path) == {"null": f"c{os.makedev(1, 3)}"}


@needs_root
def test_normalize_stops_at_mount_points(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    libc.mount("tmpfs", str(inner), "tmpfs", 0, "size=1m")
    try:
        (inner / ".wh.x").touch()
        (tmp_path / ".wh.y").touch()
        assert OVERLAY.normalize(str(tmp_path)) == 1
        assert os.listdir(inner) == [".wh.x"]
    finally:
        libc.umount2(str(inner))


def test_normalize_refuses_a_symlinked_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    with pytest.raises(OSError):
        AUFS.normalize(str(tmp_path / "link"))


@needs_root
def test_root_is_opaque_follows_every_change_of_a_remembered_directory(
        tmp_path: Path) -> None:
    """A directory's answer is remembered by its (device, inode, ctime), once its ctime is
    older than a clock tick: a marker put in or taken out, or the xattr set or removed,
    changes the ctime, so the next question is answered afresh."""
    layer = tmp_path / "layer"
    layer.mkdir()
    time.sleep(0.15)  # settled: the answer is remembered
    assert not root_is_opaque(str(layer))
    (layer / WH_OPAQUE).write_bytes(b"")
    assert root_is_opaque(str(layer))
    time.sleep(0.15)
    assert root_is_opaque(str(layer))  # remembered, still right
    (layer / WH_OPAQUE).unlink()
    assert not root_is_opaque(str(layer))
    time.sleep(0.15)
    assert not root_is_opaque(str(layer))
    os.setxattr(layer, OVERLAY_OPAQUE_XATTR, b"y")
    assert root_is_opaque(str(layer))
    time.sleep(0.15)
    assert root_is_opaque(str(layer))
    os.removexattr(layer, OVERLAY_OPAQUE_XATTR)
    assert not root_is_opaque(str(layer))
    # a stat handed in is used as the key; what is not a directory is never opaque
    assert not root_is_opaque(str(layer), os.stat(layer))
    (tmp_path / "file").write_bytes(b"")
    assert not root_is_opaque(str(tmp_path / "file"))
    assert not root_is_opaque(str(tmp_path / "missing"))
    link = tmp_path / "migrated"
    link.symlink_to(layer)  # a migrated layer: followed
    (layer / WH_OPAQUE).write_bytes(b"")
    assert root_is_opaque(str(link))


def _kernel_linked(tmp_path: Path) -> os.stat_result:
    """``.wh..wh.aufs`` and two whiteouts linked to it, as kernel AUFS leaves them."""
    base = tmp_path / ".wh..wh.aufs"
    base.touch(mode=0o444)
    os.utime(base, ns=(10**15, 10**15))
    for name in ("x", "y"):
        os.link(base, tmp_path / f".wh.{name}")
    return base.lstat()


def test_an_aufs_whiteout_made_over_a_linked_one_is_a_new_file(tmp_path: Path) -> None:
    before = _kernel_linked(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        AUFS.make_whiteout(fd, "x", 0o640)
    finally:
        os.close(fd)
    new = (tmp_path / ".wh.x").lstat()
    assert (new.st_ino != before.st_ino, new.st_nlink, stat.S_IMODE(new.st_mode)) == (
        True, 1, 0o640)
    after = (tmp_path / ".wh..wh.aufs").lstat()
    assert (after.st_nlink, after.st_mtime_ns, after.st_mode) == (
        2, before.st_mtime_ns, before.st_mode)


@needs_root
def test_normalize_over_a_linked_marker_leaves_its_other_names(tmp_path: Path) -> None:
    """A layer AUFS wrote (``.wh.x`` a link of ``.wh..wh.aufs``), then fuse-overlayfs
    (a 0:0 device ``x``): the converted marker gets the device's metadata, alone."""
    before = _kernel_linked(tmp_path)
    os.mknod(tmp_path / "x", stat.S_IFCHR | 0o640, 0)
    os.utime(tmp_path / "x", ns=(7 * 10**9, 7 * 10**9))
    AUFS.normalize(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".wh..wh.aufs", ".wh.x", ".wh.y"]
    x = (tmp_path / ".wh.x").lstat()
    assert (x.st_nlink, stat.S_IMODE(x.st_mode), x.st_mtime_ns) == (1, 0o640, 7 * 10**9)
    for name in (".wh..wh.aufs", ".wh.y"):
        st = (tmp_path / name).lstat()
        assert (st.st_nlink, st.st_mode, st.st_mtime_ns) == (2, before.st_mode,
                                                             before.st_mtime_ns)


@needs_root
@pytest.mark.skipif(loopfs.skip_reason() is not None, reason=str(loopfs.skip_reason()))
def test_root_is_opaque_on_a_filesystem_of_whole_second_times(tmp_path: Path) -> None:
    """ext4 with 128-byte inodes (ext3 too) stamps whole seconds: a directory changed
    0.5 s ago may change again under the same ctime, so its answer is not remembered
    until that second is well over."""
    with loopfs.loop_fs(tmp_path, 8, inode_size=128) as fs:
        layer = fs / "layer"
        for _ in range(60):  # a second of which 0.15..0.6 s is left after the checks
            layer.mkdir()
            before = os.stat(layer).st_ctime_ns
            assert before % 1_000_000_000 == 0  # whole seconds, as promised
            if 150_000_000 < time.time_ns() - before < 400_000_000:
                assert not root_is_opaque(str(layer))
                (layer / WH_OPAQUE).write_bytes(b"")
                if os.stat(layer).st_ctime_ns == before:  # the same second still
                    break
                (layer / WH_OPAQUE).unlink()
            layer.rmdir()
            time.sleep(0.05)
        else:
            pytest.fail("no second was left to test in")
        assert root_is_opaque(str(layer))  # the marker put in under the same ctime
