"""Layer-store rules on real engines: ids, the on-disk format, failures that leave nothing
behind, dead FUSE daemons, cleanup, and what init refuses."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import aufs
from aufs._sys import daemon, libc, mountinfo
from aufs._sys import mount as sysmount
from aufs.graphdriver import (
    IncompatibleFSError,
    InvalidLayerIDError,
    LayerInUseError,
    LayerNotFoundError,
    NotSupportedError,
)
from aufs.union import aufs as aufs_engine
from aufs.union import fuse_overlayfs
from aufs.union.base import ChainTooLongError
from aufs.union.overlay import OverlayEngine
from tests.conftest import fuse_daemons_below, mounts_below, require_engine
from tests.housekeeping import content_names


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``root`` with its mode and, for files and links, content."""
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.fsencode(os.readlink(p))
            else:
                data = b""
            out[str(p.relative_to(root))] = (st.st_mode, data)
    return out


# -- ids ---------------------------------------------------------------------------------------

BAD_IDS = ["", ".", "..", "../x", "a/b", "/etc", "x-removing", "a b", "x" * 129, "é"]


def _calls(bad: str) -> list[Callable[[aufs.Driver], object]]:
    calls: list[Callable[[aufs.Driver], object]] = [
        lambda d: d.create(bad),
        lambda d: d.get(bad),
        lambda d: d.put(bad),
        lambda d: d.remove(bad),
        lambda d: d.mounted(bad),
        lambda d: d.parents(bad),
        lambda d: d.refcount(bad),
        lambda d: d.diff_size(bad),
        lambda d: d.changes(bad),
        lambda d: d.diff(bad),
        lambda d: d.apply_diff(bad, "", io.BytesIO(b"")),
    ]
    if bad:  # as a parent, "" means "none"
        calls += [
            lambda d: d.create("fresh", bad),
            lambda d: d.changes("top", bad),
            lambda d: d.diff_size("top", bad),
            lambda d: d.diff("top", bad),
            lambda d: d.apply_diff("top", bad, io.BytesIO(b"")),
        ]
    return calls


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_touch_nothing(driver: aufs.Driver, store_root: Path, bad: str) -> None:
    driver.create("base")
    driver.create("top", "base")
    driver.get("top")
    before = snapshot(store_root)
    mounts = mounts_below(store_root)
    for call in _calls(bad):
        with pytest.raises(InvalidLayerIDError):
            call(driver)
    assert driver.exists(bad) is False
    assert snapshot(store_root) == before
    assert mounts_below(store_root) == mounts
    assert driver.refcount("top") == 1
    assert not (store_root.parent / "x").exists()


# -- Docker's on-disk format ----------------------------------------------------------------


def test_layers_files_are_dockers_bytes(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("a")
    driver.create("b", "a")
    driver.create("c", "b")
    assert (store_root / "layers" / "a").read_bytes() == b""
    assert (store_root / "layers" / "b").read_bytes() == b"a\n"
    assert (store_root / "layers" / "c").read_bytes() == b"b\na\n"
    assert sorted(os.listdir(store_root / "layers")) == ["a", "b", "c"]
    assert sorted(os.listdir(store_root / "diff")) == ["a", "b", "c"]
    assert sorted(os.listdir(store_root / "mnt")) == ["a", "b", "c"]
    assert sorted(os.listdir(store_root)) == [".aufs", "diff", "layers", "mnt"]
    assert driver.parents("c") == ["b", "a"]
    assert dict(driver.status())["Dirs"] == "3"


def _docker_store(root: Path) -> None:
    """What Docker's aufs driver leaves: three dirs, .wh. whiteouts, no metadata of ours."""
    for top in ("layers", "diff", "mnt"):
        (root / top).mkdir(parents=True)
    for layer, chain in (("base", b""), ("top", b"base\n")):
        (root / "layers" / layer).write_bytes(chain)
        (root / "diff" / layer).mkdir()
        (root / "mnt" / layer).mkdir()
    (root / "diff" / "base" / "gone").write_text("x")
    (root / "diff" / "base" / "kept").write_text("x")
    (root / "diff" / "top" / ".wh.gone").touch()


def test_a_docker_store_opens_with_an_engine_that_reads_it(store_root: Path) -> None:
    require_engine("fuse-overlayfs")
    _docker_store(store_root)
    d = aufs.init(store_root)
    try:
        assert d.whiteouts.name == "aufs"
        assert d.engine.name in ("aufs", "fuse-overlayfs")
        assert sorted(os.listdir(d.get("top"))) == ["kept"]
        d.put("top")
        assert (store_root / "diff" / "top" / ".wh.gone").is_file()
    finally:
        d.cleanup()


def test_a_docker_store_refuses_kernel_overlay(store_root: Path) -> None:
    _docker_store(store_root)
    with pytest.raises(NotSupportedError, match="convert") as info:
        aufs.init(store_root, ["aufs.engine=overlay"])
    assert "aufs whiteouts" in str(info.value)
    assert not (store_root / ".aufs" / "store.json").exists()


# -- failures leave nothing behind -------------------------------------------------------------


def test_create_with_unknown_parent_leaves_nothing(driver: aufs.Driver,
                                                   store_root: Path) -> None:
    driver.create("base")
    before = snapshot(store_root)
    with pytest.raises(LayerNotFoundError, match="nope"):
        driver.create("child", "nope")
    assert snapshot(store_root) == before
    assert not driver.exists("child")


def test_remove_of_a_parent_removes_nothing(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("base")
    driver.create("mid", "base")
    driver.create("top", "mid")
    Path(driver.get("mid"), "f").write_text("data")
    driver.get("top")
    before = snapshot(store_root)
    for layer in ("base", "mid"):
        with pytest.raises(LayerInUseError, match=layer):
            driver.remove(layer)
    assert snapshot(store_root) == before
    assert driver.mounted("mid") and driver.mounted("top")
    assert driver.refcount("mid") == 1


def test_remove_of_a_mounted_layer_with_references(driver: aufs.Driver,
                                                   store_root: Path) -> None:
    driver.create("base")
    driver.create("top", "base")
    Path(driver.get("top"), "f").write_text("x")
    driver.get("top")
    driver.remove("top")
    assert not driver.exists("top") and not driver.mounted("top")
    for top in ("layers", "diff", "mnt"):
        assert os.listdir(store_root / top) == ["base"]
    assert not list((store_root / ".aufs" / "work").iterdir())
    driver.create("top", "base")  # the id is free again, with a fresh count
    assert driver.refcount("top") == 0
    assert os.listdir(driver.get("top")) == []
    driver.put("top")
    assert not driver.mounted("top")


def test_unknown_layers(driver: aufs.Driver) -> None:
    for call in (driver.get, driver.put, driver.remove, driver.parents, driver.diff_size):
        with pytest.raises(LayerNotFoundError):
            call("missing")
    assert driver.mounted("missing") is False
    assert driver.exists("missing") is False


def test_init_finishes_every_kind_of_leftover(store_root: Path, engine: str) -> None:
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    d.create("keep")
    d.create("half")
    d.cleanup()
    aux = store_root / ".aufs"
    os.rename(store_root / "layers" / "half", store_root / "layers" / "half-removing")
    (store_root / "mnt" / "old-removing").mkdir()
    (store_root / "diff" / "old-removing" / "deep").mkdir(parents=True)
    (aux / "work" / "old-removing").mkdir()
    (store_root / "layers" / "keep~99999999").write_bytes(b"")  # a torn atomic write
    (aux / "staging" / "apply-keep-99999999").mkdir()             # its process is gone
    (store_root / "diff" / "unpublished").mkdir()  # a create killed before layers/<id>
    (store_root / "mnt" / "unpublished").mkdir()
    (store_root / "diff" / "moved" / "etc").mkdir(parents=True)  # not empty: kept
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    try:
        for top in ("layers", "mnt"):
            assert os.listdir(store_root / top) == ["keep"]
        assert sorted(os.listdir(store_root / "diff")) == ["keep", "moved"]
        assert os.listdir(aux / "staging") == []
        assert not any(p.name.endswith("-removing") for p in (aux / "work").iterdir())
        assert d.ids() == ["keep"]
    finally:
        d.cleanup()


def test_a_leftover_that_is_a_mount_point_is_not_emptied(store_root: Path) -> None:
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    victim = store_root / "mnt" / "x-removing"
    victim.mkdir()
    libc.mount("tmpfs", str(victim), "tmpfs", 0, "size=1m")
    try:
        (victim / "precious").write_text("data")
        aufs.init(store_root, ["aufs.engine=overlay"])  # finishes leftovers
        assert (victim / "precious").read_text() == "data"
    finally:
        d.cleanup()
    assert mounts_below(store_root) == []


# -- references --------------------------------------------------------------------------------


def test_threads_share_exact_counts(driver: aufs.Driver) -> None:
    driver.create("base")
    driver.create("top", "base")
    driver.get("top")  # held throughout, so the threads never unmount
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                assert driver.get("top") == driver.layout.mnt("top")
                driver.put("top")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert driver.refcount("top") == 1 and driver.mounted("top")
    driver.put("top")
    assert driver.refcount("top") == 0 and not driver.mounted("top")


def test_base_layers_count_without_mounting(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("base")
    assert driver.get("base") == str(store_root / "diff" / "base")
    assert driver.get("base") == str(store_root / "diff" / "base")
    assert driver.refcount("base") == 2 and not driver.mounted("base")
    assert mounts_below(store_root / "diff") == []
    driver.put("base")
    driver.put("base")
    driver.put("base")  # one too many: harmless
    assert driver.refcount("base") == 0


def test_a_daemon_that_will_not_exit_is_killed() -> None:
    with subprocess.Popen(["sleep", "60"]) as stuck, subprocess.Popen(["true"]) as done:
        done.wait()
        started = time.monotonic()
        daemon.reap(daemon.open_pidfds([stuck.pid, done.pid]), 0.2)
        assert stuck.wait(timeout=5) == -signal.SIGKILL
        assert time.monotonic() - started < 2


# -- cleanup -------------------------------------------------------------------------------------


def test_cleanup_unmounts_everything_and_the_store_lives_on(store_root: Path,
                                                            engine: str) -> None:
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    d.create("base")
    parent = "base"
    for i in range(5):
        d.create(f"l{i}", parent)
        Path(d.get(f"l{i}"), f"f{i}").touch()
        parent = f"l{i}"
    d.get("l4")
    assert mountinfo.is_mountpoint(str(store_root))  # init made the root a private bind
    assert len(mounts_below(store_root / "mnt")) == 5
    assert len(fuse_daemons_below(store_root)) == (5 if engine == "fuse-overlayfs" else 0)
    d.cleanup()
    assert mounts_below(store_root) == []  # unions and the root's bind
    assert fuse_daemons_below(store_root) == []
    assert os.listdir(store_root / ".aufs" / "refs") == []
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    try:
        assert sorted(os.listdir(d.get("l4"))) == [f"f{i}" for i in range(5)]
        assert d.refcount("l4") == 1
    finally:
        d.cleanup()


def test_cleanup_leaves_a_filesystem_mounted_at_the_root(store_root: Path, engine: str) -> None:
    store_root.mkdir()
    libc.mount("tmpfs", str(store_root), "tmpfs", 0, "size=16m")
    try:
        d = aufs.init(store_root, [f"aufs.engine={engine}"])
        assert dict(d.status())["Backing Filesystem"] == "tmpfs"
        d.create("base")
        d.create("top", "base")
        d.get("top")
        d.cleanup()
        assert mounts_below(store_root) == [str(store_root)]  # the tmpfs, not unmounted
        assert (store_root / "layers" / "top").exists()
    finally:
        sysmount.unmount(str(store_root))


# -- what init refuses ---------------------------------------------------------------------------


def test_overlay_refuses_a_store_on_overlayfs(store_root: Path) -> None:
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        d.create("base")
        d.create("top", "base")
        inner = Path(d.get("top"), "store")
        with pytest.raises(IncompatibleFSError, match="overlayfs"):
            aufs.init(inner, ["aufs.engine=overlay"])
    finally:
        d.cleanup()


def test_forced_aufs_names_the_missing_kernel_module(store_root: Path) -> None:
    if "aufs" in Path("/proc/filesystems").read_text().split():
        pytest.skip("this kernel has AUFS")
    with pytest.raises(aufs.AufsNotSupportedError) as info:
        aufs.init(store_root, ["aufs.engine=aufs"])
    assert str(info.value) == "AUFS was not found in /proc/filesystems"
    assert type(info.value).__mro__[1] is NotSupportedError
    assert mounts_below(store_root) == []  # the root's bind was undone


def test_forced_aufs_on_an_existing_overlay_store_names_the_missing_kernel_module(
        store_root: Path) -> None:
    """API.md: forcing aufs on a kernel without AUFS raises AufsNotSupportedError with its
    fixed message, also on a store that auto made with overlay whiteouts."""
    if "aufs" in Path("/proc/filesystems").read_text().split():
        pytest.skip("this kernel has AUFS")
    require_engine("overlay")
    aufs.init(store_root, ["aufs.engine=overlay"]).cleanup()
    before = snapshot(store_root)
    with pytest.raises(aufs.AufsNotSupportedError) as info:
        aufs.init(store_root, ["aufs.engine=aufs"])
    assert str(info.value) == "AUFS was not found in /proc/filesystems"
    assert snapshot(store_root) == before
    assert mounts_below(store_root) == []


def test_an_overlay_store_refuses_aufs_and_names_the_conversion(
        store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel has AUFS (made to say so here: the refusal comes before any
    mount), an overlay-format store names the conversion instead."""
    require_engine("overlay")
    aufs.init(store_root, ["aufs.engine=overlay"]).cleanup()
    before = snapshot(store_root)
    monkeypatch.setattr(aufs_engine, "supports_aufs", lambda: True)
    with pytest.raises(NotSupportedError, match=r"convert the store first \(aufs convert") as info:
        aufs.init(store_root, ["aufs.engine=aufs"])
    assert not isinstance(info.value, aufs.AufsNotSupportedError)
    assert snapshot(store_root) == before
    assert mounts_below(store_root) == []


def test_auto_says_what_it_tried_and_why_each_failed(store_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without fuse-overlayfs, and a store on overlayfs (as inside a container)."""
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        d.create("base")
        d.create("top", "base")
        inner = Path(d.get("top"), "store")
        monkeypatch.setattr(fuse_overlayfs, "BINARY", "fuse-overlayfs-not-installed")
        with pytest.raises(NotSupportedError) as info:
            aufs.init(inner)
        assert not isinstance(info.value, IncompatibleFSError)  # not every engine said so
        msg = str(info.value)
        assert msg.startswith("no union engine works here (")
        assert "aufs: " in msg and "overlay: overlayfs cannot use a store on overlayfs" in msg
        assert "fuse-overlayfs: fuse-overlayfs-not-installed is not installed" in msg
        if not Path("/proc/filesystems").read_text().count("aufs"):
            assert "aufs: AUFS was not found in /proc/filesystems" in msg
    finally:
        d.cleanup()


def test_the_store_records_its_engine_and_format(driver: aufs.Driver, store_root: Path,
                                                  engine: str) -> None:
    recorded = json.loads((store_root / ".aufs" / "store.json").read_text())
    fmt = "overlay" if engine == "overlay" else "aufs"
    assert recorded == {"engine": engine, "whiteouts": fmt, "version": 1}
    assert driver.whiteouts.name == fmt


def test_fuse_overlayfs_on_an_overlay_store_keeps_overlay_whiteouts(store_root: Path) -> None:
    require_engine("overlay")
    require_engine("fuse-overlayfs")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    d.create("base")
    Path(d.layout.diff("base"), "gone").touch()
    d.create("top", "base")
    d.cleanup()
    d = aufs.init(store_root, ["aufs.engine=fuse-overlayfs"])
    try:
        assert d.whiteouts.name == "overlay"
        os.unlink(Path(d.get("top"), "gone"))
        d.put("top")
        gone = Path(d.layout.diff("top"), "gone").lstat()
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.listdir(d.layout.diff("top")) == ["gone"]
    finally:
        d.cleanup()
    assert json.loads((store_root / ".aufs" / "store.json").read_text())["whiteouts"] == "overlay"


def test_the_mount_label_reaches_the_mount(driver: aufs.Driver) -> None:
    driver.create("base")
    driver.create("top", "base")
    label = "system_u:object_r:container_file_t:s0"
    specs = driver.engine.mount_specs(driver._branches("top", driver.parents("top"), label))
    assert any(label in opt and opt.startswith("context=") for s in specs for opt in s.options)


# -- whiteouts on disk -------------------------------------------------------------------------


def test_each_engine_keeps_its_stores_format_on_disk(driver: aufs.Driver, engine: str) -> None:
    driver.create("base")
    Path(driver.get("base"), "gone").write_text("x")
    Path(driver.layout.diff("base"), "dir").mkdir()
    Path(driver.layout.diff("base"), "dir", "old").touch()
    driver.create("top", "base")
    mnt = Path(driver.get("top"))
    (mnt / "gone").unlink()
    (mnt / "dir" / "old").unlink()
    (mnt / "dir").rmdir()
    (mnt / "dir").mkdir()
    driver.put("top")
    diff = Path(driver.layout.diff("top"))
    if driver.whiteouts.name == "aufs":
        assert content_names(snapshot(diff)) == [".wh.gone", "dir", "dir/.wh..wh..opq"]
    else:
        gone = (diff / "gone").lstat()
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.getxattr(diff / "dir", "trusted.overlay.opaque") == b"y"
    assert {"/dir", "/gone"} <= {c.path for c in driver.changes("top")}
    mnt = Path(driver.get("top"))
    assert os.listdir(mnt) == ["dir"] and os.listdir(mnt / "dir") == []
    driver.put("top")


def test_legacy_overlay_mount_of_500_lowers(store_root: Path) -> None:
    """Without fsconfig lowerdir+, 500 lowers still mount: short links, relative paths."""
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        assert isinstance(d.engine, OverlayEngine)
        d.engine.caps = dataclasses.replace(d.engine.caps, new_api=False)
        parent = ""
        for i in range(501):
            d.create(f"{i:064x}", parent)
            Path(d.layout.diff(f"{i:064x}"), f"f{i}").touch()
            parent = f"{i:064x}"
        (spec,) = d.engine.mount_specs(d._branches(parent, d.parents(parent)))
        assert spec.cwd == d.layout.links_dir and len(spec.data) < 4096
        assert len(os.listdir(d.get(parent))) == 501
        assert len(os.listdir(d.layout.links_dir)) == 500
        d.put(parent)
        d.create("too-deep", parent)  # 501 lower layers: more than overlayfs stacks
        with pytest.raises(ChainTooLongError, match="at most 500"):
            d.get("too-deep")
        assert not d.mounted("too-deep") and d.refcount("too-deep") == 0
    finally:
        d.cleanup()
