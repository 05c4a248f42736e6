"""apply_diff on every engine: Docker's TestApplyDiff and graphtest DiffApply ported, a full
round trip diff -> apply, whiteouts in the store's own format, atomicity (bad input, a
mounted layer, kill -9 mid-apply)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import aufs
from aufs.archive import ArchiveError
from aufs.errors import LayerMountedError
from aufs.whiteout import OVERLAY_OPAQUE_XATTR, WH_OPAQUE, WH_PREFIX
from tests.housekeeping import listdir
from tests.safety.snapshot import snapshot


def tar_of(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of regular files (bytes) and directories (None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_apply_diff_docker(driver: aufs.Driver) -> None:
    """Docker's TestApplyDiff."""
    driver.create("1")
    with open(os.path.join(driver.layout.diff("1"), "test_file"), "wb") as f:
        f.truncate(1024)
    with driver.diff("1") as stream:
        data = stream.read()
    driver.create("2")
    driver.create("3", "2")
    assert driver.apply_diff("3", "", io.BytesIO(data)) == 1024
    mnt = driver.get("3")
    try:
        assert os.stat(os.path.join(mnt, "test_file")).st_size == 1024
    finally:
        driver.put("3")


def _populate(root: str) -> None:
    os.makedirs(f"{root}/dir/sub")
    with open(f"{root}/dir/file", "wb") as f:
        f.write(b"content" * 1000)
    os.link(f"{root}/dir/file", f"{root}/dir/hardlink")
    os.link(f"{root}/dir/file", f"{root}/dir/sub/hardlink2")
    os.symlink("/etc/passwd", f"{root}/dir/abs-link")
    os.symlink("../dir/file", f"{root}/dir/sub/rel-link")
    os.mkfifo(f"{root}/dir/fifo", 0o640)
    os.mknod(f"{root}/dir/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(f"{root}/dir/blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    with open(f"{root}/setuid", "wb") as f:
        f.write(b"#!/bin/sh\n")
    os.chown(f"{root}/setuid", 1234, 5678)
    os.chmod(f"{root}/setuid", 0o4755)
    os.chown(f"{root}/dir/sub", 99, 98)
    os.chmod(f"{root}/dir/sub", 0o3777)
    os.lchown(f"{root}/dir/abs-link", 7, 8)
    os.setxattr(f"{root}/dir/file", "user.color", b"blue\x00\xff")
    os.setxattr(f"{root}/dir/sub", "user.dir", b"x")
    # security.capability v2: cap_net_bind_service
    os.setxattr(f"{root}/setuid", "security.capability",
                bytes.fromhex("0000000200040000000000000000000000000000"))
    long_dir = f"{root}/" + "/".join(["d" * 60] * 4)
    os.makedirs(long_dir)
    with open(f"{long_dir}/{'f' * 200}", "wb") as f:
        f.write(b"long")
    os.symlink("t" * 300, f"{root}/long-target")
    for path, when in ((f"{root}/dir/file", 1_000_000_000), (f"{root}/dir/sub", 1_100_000_000),
                       (f"{root}/dir", 1_200_000_000), (long_dir, 1_300_000_000)):
        os.utime(path, (when, when))
    os.utime(f"{root}/dir/abs-link", (1_400_000_000, 1_400_000_000), follow_symlinks=False)


def test_round_trip_keeps_every_attribute(driver: aufs.Driver) -> None:
    driver.create("src")
    src = driver.layout.diff("src")
    _populate(src)
    with driver.diff("src") as stream:
        data = stream.read()
    driver.create("dst")
    size = driver.apply_diff("dst", "", io.BytesIO(data))
    before = snapshot(src)
    after = snapshot(driver.layout.diff("dst"))
    before.pop(".")
    after.pop(".")
    assert after == before
    assert size == driver.diff_size("src")
    # Apply once more into the non-empty layer: the same tree (files replaced, not merged).
    driver.apply_diff("dst", "", io.BytesIO(data))
    again = snapshot(driver.layout.diff("dst"))
    again.pop(".")
    assert again == before
    assert os.listdir(driver.layout.staging_dir) == []


def test_diff_apply_graphtest(driver: aufs.Driver) -> None:
    """graphtest DriverTestDiffApply: a diff of an upper layer applied onto a copy of the
    base gives the upper layer's view, deletions included."""
    driver.create("base")
    base = driver.layout.diff("base")
    os.makedirs(f"{base}/keep")
    for name in ("a", "b", "keep/c"):
        with open(f"{base}/{name}", "w") as f:
            f.write(name)
    driver.create("upper", "base")
    mnt = driver.get("upper")
    try:
        os.unlink(f"{mnt}/a")
        with open(f"{mnt}/b", "w") as f:
            f.write("changed")
        with open(f"{mnt}/new", "w") as f:
            f.write("new")
    finally:
        driver.put("upper")
    with driver.diff("upper") as stream:
        data = stream.read()
    with driver.diff("base") as stream:
        base_data = stream.read()
    driver.create("base2")
    driver.apply_diff("base2", "", io.BytesIO(base_data))
    driver.create("upper2", "base2")
    size = driver.apply_diff("upper2", "base2", io.BytesIO(data))
    assert size == driver.diff_size("upper")
    mnt = driver.get("upper2")
    try:
        assert sorted(os.listdir(mnt)) == ["b", "keep", "new"]
        with open(f"{mnt}/b") as f:
            assert f.read() == "changed"
    finally:
        driver.put("upper2")
    assert driver.changes("upper2") == driver.changes("upper")


def test_whiteouts_in_store_format(driver: aufs.Driver) -> None:
    driver.create("L")
    diff = driver.layout.diff("L")
    os.makedirs(f"{diff}/opq/old")
    with open(f"{diff}/gone", "w") as f:
        f.write("x")
    data = tar_of([(f"{WH_PREFIX}gone", b""), ("opq", None), (f"opq/{WH_OPAQUE}", b""),
                   ("opq/fresh", b"new")])
    driver.apply_diff("L", "", io.BytesIO(data))
    assert sorted(os.listdir(f"{diff}/opq")) == sorted(
        ["fresh"] + ([WH_OPAQUE] if driver.whiteouts.name == "aufs" else []))
    if driver.whiteouts.name == "overlay":
        st = os.lstat(f"{diff}/gone")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(f"{diff}/opq", OVERLAY_OPAQUE_XATTR) == b"y"
    else:
        assert not os.path.lexists(f"{diff}/gone")
        assert os.path.isfile(f"{diff}/{WH_PREFIX}gone")
    # Exported again, the layer gives the same whiteouts back.
    with driver.diff("L") as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        names = [m.name for m in tf]
    assert f"{WH_PREFIX}gone" in names and f"opq/{WH_OPAQUE}" in names


def test_engine_formats(store_root: Path) -> None:
    """overlay store: 0:0 char-device whiteouts; fuse-overlayfs store: .wh. files."""
    from tests.conftest import engine_skip_reason

    seen = 0
    for engine, fmt in (("overlay", "overlay"), ("fuse-overlayfs", "aufs")):
        if engine_skip_reason(engine) is not None:
            continue
        d = aufs.init(store_root / engine, [f"aufs.engine={engine}"])
        try:
            assert d.whiteouts.name == fmt
            d.create("L")
            d.apply_diff("L", "", io.BytesIO(tar_of([(f"{WH_PREFIX}x", b"")])))
            st = os.lstat(os.path.join(d.layout.diff("L"), d.whiteouts.whiteout_path_name("x")))
            assert stat.S_ISCHR(st.st_mode) if fmt == "overlay" else stat.S_ISREG(st.st_mode)
            seen += 1
        finally:
            d.cleanup()
    if not seen:
        pytest.skip("neither overlay nor fuse-overlayfs runs here")


def test_bad_input_leaves_layer_as_it_was(driver: aufs.Driver) -> None:
    driver.create("L")
    diff = driver.layout.diff("L")
    with open(f"{diff}/old", "w") as f:
        f.write("old")
    before = snapshot(diff)
    data = tar_of([("a", b"A" * 5000), ("b", b"B" * 5000), ("old", b"replaced")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    end_of_members = last.offset_data + (last.size + 511) // 512 * 512
    # inside a header, at a header, inside data, and cut exactly before the end marker
    for cut in (100, 512, 1536, 3000, last.offset_data + 3, end_of_members):
        with pytest.raises(ArchiveError):
            driver.apply_diff("L", "", io.BytesIO(data[:cut]))
        assert snapshot(diff) == before, cut
    assert os.listdir(driver.layout.staging_dir) == []


def test_refuses_a_mounted_layer(driver: aufs.Driver) -> None:
    driver.create("P")
    driver.create("L", "P")  # a layer with a parent is mounted as a union by get()
    driver.get("L")
    try:
        assert driver.mounted("L")
        with pytest.raises(LayerMountedError):
            driver.apply_diff("L", "", io.BytesIO(tar_of([("a", b"a")])))
    finally:
        driver.put("L")
    assert listdir(driver.layout.diff("L")) == []  # AUFS's housekeeping aside


_CHILD = """
import sys, aufs
d = aufs.init(sys.argv[1], ["aufs.engine=" + sys.argv[2]])
d.apply_diff("L", "", sys.stdin.buffer)
"""


def test_kill_9_mid_apply(driver: aufs.Driver, engine: str) -> None:
    root = driver.layout.root
    driver.create("L")
    diff = driver.layout.diff("L")
    with open(f"{diff}/old", "w") as f:
        f.write("old")
    before = snapshot(diff)
    data = tar_of([(f"f{i:04}", os.urandom(20_000)) for i in range(500)])
    child = subprocess.Popen([sys.executable, "-c", _CHILD, root, engine],
                             stdin=subprocess.PIPE)
    try:
        assert child.stdin is not None
        child.stdin.write(data[: len(data) // 2])
        child.stdin.flush()
        deadline = time.monotonic() + 30
        staged: list[str] = []
        while time.monotonic() < deadline:  # wait until extraction has begun
            staged = os.listdir(driver.layout.staging_dir)
            if staged and len(os.listdir(driver.layout.staging(staged[0]))) > 10:
                break
            time.sleep(0.02)
        assert staged, "the child never started extracting"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
    assert snapshot(diff) == before
    d2 = aufs.init(root, [f"aufs.engine={engine}"])
    try:
        assert snapshot(d2.layout.diff("L")) == before
        assert os.listdir(d2.layout.staging_dir) == []
    finally:
        d2.cleanup()


def test_whiteout_owner_and_time_survive_a_round_trip(driver: aufs.Driver) -> None:
    """A whiteout keeps its entry's owner and mtime (Docker's aufs store does: the ``.wh.``
    file is extracted like any file), so a diff gives the same entry back."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(f"{WH_PREFIX}gone")
        info.uid, info.gid, info.mtime, info.mode = 1234, 5678, 1_500_000_000, 0o644
        tf.addfile(info, io.BytesIO(b""))
    driver.create("L")
    driver.apply_diff("L", "", io.BytesIO(buf.getvalue()))
    st = os.lstat(os.path.join(driver.layout.diff("L"),
                               driver.whiteouts.whiteout_path_name("gone")))
    assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (1234, 5678, 1_500_000_000)
    with driver.diff("L") as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        (member,) = list(tf)
    assert (member.name, member.uid, member.gid, int(member.mtime), member.mode) == (
        f"{WH_PREFIX}gone", 1234, 5678, 1_500_000_000, 0o644)  # whatever the engine


@pytest.mark.parametrize("same_archive", [True, False])
def test_a_path_below_a_whited_out_directory_makes_it_again_opaque(
        driver: aufs.Driver, same_archive: bool) -> None:
    """``.wh.d`` then ``d/x/y`` with no ``d/`` entry (Docker makes the missing ``d`` as
    ``MkdirAll`` would): ``d`` is made again where its whiteout was, as an explicit entry
    makes it — opaque, the whiteout gone — so the parent's ``d/old`` stays hidden. Before,
    an overlay-format store refused it ("'d' is not a directory"): the whiteout device was
    in the way."""
    driver.create("P")
    driver.apply_diff("P", "", io.BytesIO(tar_of([("d", None), ("d/old", b"o")])))
    driver.create("L", "P")
    if same_archive:
        driver.apply_diff("L", "P", io.BytesIO(tar_of([(f"{WH_PREFIX}d", b""),
                                                       ("d/x/y", b"new")])))
    else:  # the whiteout was already in the layer (the seeded staging path)
        driver.apply_diff("L", "P", io.BytesIO(tar_of([(f"{WH_PREFIX}d", b"")])))
        driver.apply_diff("L", "P", io.BytesIO(tar_of([("d/x/y", b"new")])))
    diff = Path(driver.layout.diff("L"))
    assert os.listdir(diff) == ["d"]
    assert stat.S_ISDIR((diff / "d").lstat().st_mode)
    if driver.whiteouts.name == "overlay":
        assert os.getxattr(diff / "d", OVERLAY_OPAQUE_XATTR) == b"y"
    else:
        assert sorted(os.listdir(diff / "d")) == [WH_OPAQUE, "x"]
    assert (diff / "d/x/y").read_bytes() == b"new"
    mnt = driver.get("L")
    try:
        assert os.listdir(os.path.join(mnt, "d")) == ["x"]  # not the parent's d/old
    finally:
        driver.put("L")
    assert [str(c) for c in driver.changes("L", "P")] == [
        "C /d", "D /d/old", "A /d/x", "A /d/x/y"]


@pytest.mark.parametrize("below", [f"d/{WH_PREFIX}x", f"d/{WH_OPAQUE}"])
def test_a_whiteout_below_a_whited_out_directory_does_not_bring_it_back(
        driver: aufs.Driver, below: str) -> None:
    """``.wh.d`` then ``d/.wh.x`` (or an opaque marker in ``d``) only deletes: ``d`` is not
    made again where its whiteout was. In the overlay format the whiteout device is in
    the way (Docker's overlay2 fails the same: ENOTDIR) and the layer stays as it was; in
    the AUFS format ``.wh.d`` stays, as in Docker's aufs store."""
    driver.create("P")
    driver.apply_diff("P", "", io.BytesIO(tar_of([("d", None), ("d/old", b"o")])))
    driver.create("L", "P")
    tar = io.BytesIO(tar_of([(f"{WH_PREFIX}d", b""), (below, b"")]))
    diff = Path(driver.layout.diff("L"))
    if driver.whiteouts.name == "overlay":
        with pytest.raises(ArchiveError, match="'d' is not a directory"):
            driver.apply_diff("L", "P", tar)
        assert os.listdir(diff) == []
    else:
        driver.apply_diff("L", "P", tar)
        assert f"{WH_PREFIX}d" in os.listdir(diff)
        assert "D /d" in [str(c) for c in driver.changes("L", "P")]


def test_a_new_entry_replaces_the_layers_whiteout_of_its_name(driver: aufs.Driver) -> None:
    """Applied into a non-empty layer (the seeded staging path): an entry whose name the
    layer had whited out drops that whiteout, and a directory made there is opaque."""
    driver.create("L")
    driver.apply_diff("L", "", io.BytesIO(tar_of([(f"{WH_PREFIX}back", b""),
                                                  (f"{WH_PREFIX}dir", b""),
                                                  ("keep", b"k")])))
    driver.apply_diff("L", "", io.BytesIO(tar_of([("back", b"again"), ("dir", None),
                                                  ("dir/f", b"f")])))
    diff = Path(driver.layout.diff("L"))
    assert sorted(os.listdir(diff)) == ["back", "dir", "keep"]  # no .wh. file left
    assert stat.S_ISREG((diff / "back").lstat().st_mode)  # not an overlay whiteout
    assert (diff / "back").read_bytes() == b"again"
    if driver.whiteouts.name == "overlay":
        assert os.getxattr(diff / "dir", OVERLAY_OPAQUE_XATTR) == b"y"
    else:
        assert sorted(os.listdir(diff / "dir")) == [WH_OPAQUE, "f"]
