"""fuse-overlayfs: hard links copied up from a lower layer, and new directories' markers.

The first test pins the upstream trigger with a plain ``fuse-overlayfs`` mount (no code of
ours); the others check that our engine neither serves the wrong data nor writes opaque
markers where nothing below is replaced.
"""

from __future__ import annotations

import io
import os
import select
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import aufs
from aufs.union import fuse_tidy
from aufs.whiteout import OVERLAY_OPAQUE_XATTR, WH_OPAQUE
from tests.conftest import fuse_daemons_below, require_engine

UPPER = b"upper data that is longer\n"
LOWER = b"lower\n"


def _fuse_version() -> str:
    out = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True,
                         check=False).stdout
    return next((line.split("version ")[-1] for line in out.splitlines()
                 if line.startswith("fuse-overlayfs")), "")


@pytest.fixture
def fuse_store(store_root: Path) -> aufs.Driver:
    require_engine("fuse-overlayfs")
    return aufs.init(store_root, ["aufs.engine=fuse-overlayfs"])


def _plain_mount(tmp: Path, lowers: list[Path], upper: Path) -> Path:
    work, merged = tmp / "work", tmp / "merged"
    work.mkdir(exist_ok=True)
    merged.mkdir(exist_ok=True)
    subprocess.run(["fuse-overlayfs", "-o", "lowerdir=" + ":".join(map(str, lowers))
                    + f",upperdir={upper},workdir={work}", str(merged)],
                   check=True, capture_output=True)
    return merged


@pytest.mark.parametrize(("nlink", "origin", "upper_as_lower", "corrupt"), [
    (2, True, False, True),    # the bug: the copy names a lower file with other links
    (2, True, True, True),     # also when the copied-up layer is itself a lower one
    (2, False, False, False),  # the same file without the origin attribute: correct
    (1, True, False, False),   # the lower file has no other link: correct
])
def test_upstream_trigger(tmp_path: Path, nlink: int, origin: bool, upper_as_lower: bool,
                          corrupt: bool) -> None:
    """fuse-overlayfs 1.10 with no code of ours: an upper file carrying
    ``user.fuseoverlayfs.origin`` that names a lower file of ``st_nlink > 1`` reads the
    lower data padded with NULs to its own size."""
    require_engine("fuse-overlayfs")
    if _fuse_version() != "1.10":
        pytest.skip(f"the trigger is pinned for fuse-overlayfs 1.10, not {_fuse_version()}")
    lower, upper, top = tmp_path / "lower", tmp_path / "upper", tmp_path / "top"
    for d in (lower, upper, top):
        d.mkdir()
    (lower / "a").write_bytes(LOWER)
    if nlink == 2:
        os.link(lower / "a", lower / "b")
    (upper / "a").write_bytes(UPPER)
    if origin:
        os.setxattr(upper / "a", fuse_tidy.ORIGIN_XATTR, b"a\0")
    if upper_as_lower:
        merged = _plain_mount(tmp_path, [upper, lower], top)
    else:
        merged = _plain_mount(tmp_path, [lower], upper)
    daemons = [os.pidfd_open(pid) for pid in fuse_daemons_below(merged)]
    try:
        data = (merged / "a").read_bytes()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
        for fd in daemons:  # the daemon exits on its own once unmounted: wait for it
            select.select([fd], [], [], 60)
            os.close(fd)
    assert data == (LOWER.ljust(len(UPPER), b"\0") if corrupt else UPPER)


def _hard_linked_base(d: aufs.Driver) -> None:
    d.create("base")
    base = Path(d.layout.diff("base"))
    (base / "a").write_bytes(LOWER)
    os.link(base / "a", base / "b")
    d.create("top", "base")


def test_a_copied_up_hard_link_reads_right_after_remount(fuse_store: aufs.Driver,
                                                         store_root: Path) -> None:
    d = fuse_store
    try:
        _hard_linked_base(d)
        mnt = Path(d.get("top"))
        (mnt / "a").write_bytes(UPPER)  # fuse-overlayfs copies ``a`` up
        d.put("top")
        rw = Path(d.layout.diff("top"))
        assert fuse_tidy.ORIGIN_XATTR not in os.listxattr(rw / "a")
        for first in ("a", "b"):  # the order of lookups changed what the bug served
            mnt = Path(d.get("top"))
            names = [first, "b" if first == "a" else "a"]
            got = {n: (mnt / n).read_bytes() for n in names}
            d.put("top")
            assert got == {"a": UPPER, "b": LOWER}
        assert [str(c) for c in d.changes("top")] == ["C /a"]
    finally:
        d.cleanup()
    assert fuse_daemons_below(store_root) == []


def test_an_origin_attribute_from_a_tar_is_not_applied(fuse_store: aufs.Driver) -> None:
    d = fuse_store
    try:
        _hard_linked_base(d)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("a")
            info.size = len(UPPER)
            info.pax_headers = {f"SCHILY.xattr.{fuse_tidy.ORIGIN_XATTR}": "a",
                                "SCHILY.xattr.user.kept": "yes"}
            tar.addfile(info, io.BytesIO(UPPER))
        d.apply_diff("top", "base", io.BytesIO(buf.getvalue()))
        rw = Path(d.layout.diff("top"))
        assert os.listxattr(rw / "a") == ["user.kept"]
        mnt = Path(d.get("top"))
        try:
            assert (mnt / "a").read_bytes() == UPPER
        finally:
            d.put("top")
    finally:
        d.cleanup()


def test_a_new_directory_gets_no_opaque_marker(fuse_store: aufs.Driver) -> None:
    d = fuse_store
    try:
        d.create("base")
        base = Path(d.layout.diff("base"))
        (base / "old").mkdir()
        (base / "old" / "f").write_text("x")
        (base / "file").write_text("x")
        d.create("top", "base")
        mnt = Path(d.get("top"))
        (mnt / "new").mkdir()
        (mnt / "new" / "deeper").mkdir()
        (mnt / "new" / "deeper" / "f").write_text("y")
        (mnt / "old" / "f").unlink()
        (mnt / "old").rmdir()
        (mnt / "old").mkdir()             # replaces a lower directory: opaque
        (mnt / "file").unlink()
        (mnt / "file").mkdir()            # replaces a lower file: nothing to hide below
        d.put("top")
        rw = Path(d.layout.diff("top"))
        markers = sorted(str(p.relative_to(rw)) for p in rw.rglob(".wh.*"))
        assert markers == [f"old/{WH_OPAQUE}"]
        assert all(OVERLAY_OPAQUE_XATTR not in os.listxattr(p) for p in rw.rglob("*")
                   if p.is_dir())
        assert [str(c) for c in d.changes("top")] == [
            "C /file", "A /new", "A /new/deeper", "A /new/deeper/f", "C /old", "D /old/f"]
        with d.diff("top") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            names = [m.name.rstrip("/") for m in tar]
        assert [n for n in names if ".wh." in n] == [f"old/{WH_OPAQUE}"]
        mnt = Path(d.get("top"))
        try:
            assert os.listdir(mnt / "old") == []
            assert os.listdir(mnt / "new") == ["deeper"]
        finally:
            d.put("top")
    finally:
        d.cleanup()


@pytest.mark.parametrize(("xattr", "names", "daemon"), [
    (True, {WH_OPAQUE, ".wh..opq", "x"}, True),  # mkdir at the top (with its 0:0 device)
    (True, {WH_OPAQUE}, True),                   # mkdir deeper down
    (False, {WH_OPAQUE, "x"}, False),            # a layer tar's marker in an AUFS store
    (True, {"x"}, False),                        # an overlay-format store's marker
])
def test_the_daemon_signature(xattr: bool, names: set[str], daemon: bool) -> None:
    assert fuse_tidy.is_daemon_opaque(xattr, names) is daemon


def test_directory_below(tmp_path: Path) -> None:
    low1, low2 = tmp_path / "l1", tmp_path / "l2"
    (low1 / "d").mkdir(parents=True)
    (low2 / "e").mkdir(parents=True)
    (low2 / "f").write_text("")
    (low2 / "s").symlink_to("e")
    lowers = [str(low1), str(low2)]
    assert fuse_tidy.has_directory_below(lowers, "d")
    assert fuse_tidy.has_directory_below(lowers, "e")
    assert not fuse_tidy.has_directory_below(lowers, "f")     # a file hides nothing
    assert not fuse_tidy.has_directory_below(lowers, "s")     # nor a symlink
    assert not fuse_tidy.has_directory_below(lowers, "f/x")   # below a file: ENOTDIR
    assert not fuse_tidy.has_directory_below(lowers, "none")
    assert not fuse_tidy.has_directory_below([], "d")


@pytest.mark.parametrize(("ctime", "since", "searched"), [
    (1000.0, None, True),      # the start unknown: every directory
    (1000.0, 999.0, True),
    (1000.0, 1001.5, True),    # within the slack (btime is whole seconds)
    (1000.0, 1010.0, False),   # unchanged since before the daemon started
])
def test_changed_since(ctime: float, since: float | None, searched: bool) -> None:
    assert fuse_tidy.changed_since(ctime, since) is searched


def test_daemon_start() -> None:
    stat = (b"4242 (fuse-overlayfs) S 1 4242 4242 0 -1 4194624 100 0 0 0 0 0 0 0 20 0 "
            b"1 0 12345 1000 100 18446744073709551615")
    assert fuse_tidy.daemon_start(stat, 1_700_000_000, 100) == 1_700_000_123.45
    odd = stat.replace(b"(fuse-overlayfs)", b"(a) b (c)")  # comm may hold ") "
    assert fuse_tidy.daemon_start(odd, 0, 100) == 123.45
    with open("/proc/self/stat", "rb") as f:  # this very process: it started before now
        now = fuse_tidy.daemon_start(f.read(), _btime(), os.sysconf("SC_CLK_TCK"))
    assert now <= time.time() + fuse_tidy.SLACK


def _btime() -> int:
    with open("/proc/stat", "rb") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(b"btime "))


def test_only_directories_changed_since_the_daemon_started_are_searched(
        tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.setxattr(tmp_path / "d" / "f", fuse_tidy.ORIGIN_XATTR, b"f\0")
    assert fuse_tidy.tidy(str(tmp_path), [], since=time.time() + 100) == (0, 0)
    assert fuse_tidy.ORIGIN_XATTR in os.listxattr(tmp_path / "d" / "f")
    assert fuse_tidy.tidy(str(tmp_path), [], since=time.time() - 100) == (1, 0)
    assert os.listxattr(tmp_path / "d" / "f") == []
