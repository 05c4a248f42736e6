"""The layer store on real engines: cross-process refcounts, long chains, errors, recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aufs
from aufs.graphdriver import (
    LayerExistsError,
    LayerInUseError,
    LayerNotFoundError,
)
from aufs.union.overlay import OverlayCaps, OverlayEngine
from tests.conftest import fuse_daemons_below, require_engine


def run_py(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, check=False, timeout=60)


def test_get_in_one_process_put_in_another(driver: aufs.Driver, store_root: Path,
                                           engine: str) -> None:
    driver.create("base")
    driver.create("top", "base")
    code = f"""
        import aufs
        d = aufs.init({str(store_root)!r}, ["aufs.engine={engine}"])
        print(d.get("top"))
        d.close()
    """
    for _ in range(2):
        proc = run_py(code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(store_root / "mnt" / "top")
    assert driver.mounted("top")
    assert driver.refcount("top") == 2
    put = f"""
        import aufs
        d = aufs.init({str(store_root)!r}, ["aufs.engine={engine}"])
        d.put("top")
        print(d.mounted("top"), d.refcount("top"))
        d.close()
    """
    assert run_py(put).stdout.split() == ["True", "1"]
    assert run_py(put).stdout.split() == ["False", "0"]
    assert not driver.mounted("top")


def test_dead_holders_count_restarts_at_zero(driver: aufs.Driver, store_root: Path,
                                             engine: str) -> None:
    driver.create("base")
    driver.create("top", "base")
    script = textwrap.dedent(f"""
        import sys, time, aufs
        d = aufs.init({str(store_root)!r}, ["aufs.engine={engine}"])
        d.get("top"); d.get("top")
        print("ready", flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert driver.refcount("top") == 2
    aufs.unmount(store_root / "mnt" / "top")  # the mount goes away behind the store's back
    assert driver.get("top") == str(store_root / "mnt" / "top")
    assert driver.refcount("top") == 1
    driver.put("top")
    assert not driver.mounted("top")


def test_refcounts_nest(driver: aufs.Driver) -> None:
    driver.create("base")
    driver.create("top", "base")
    p1 = driver.get("top")
    assert driver.get("top") == p1
    driver.put("top")
    assert driver.mounted("top")
    driver.put("top")
    assert not driver.mounted("top")
    driver.put("top")  # harmless with no references
    assert not driver.mounted("top")


def test_create_existing_and_unknown(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("a")
    with pytest.raises(LayerExistsError):
        driver.create("a")
    with pytest.raises(LayerNotFoundError):
        driver.create("b", "nope")
    assert not (store_root / "diff" / "b").exists()
    assert not (store_root / "mnt" / "b").exists()
    for method in (driver.get, driver.put, driver.remove, driver.changes, driver.diff_size):
        with pytest.raises(LayerNotFoundError):
            method("missing")
    with pytest.raises(ValueError):
        driver.create("../evil")
    assert not (store_root.parent / "evil").exists()


def test_remove_parent_is_refused(driver: aufs.Driver, store_root: Path) -> None:
    driver.create("base")
    driver.create("top", "base")
    with pytest.raises(LayerInUseError):
        driver.remove("base")
    assert driver.exists("base") and (store_root / "diff" / "base").is_dir()
    driver.remove("top")
    driver.remove("base")
    assert driver.ids() == []


def test_init_finishes_removing_leftovers(store_root: Path, engine: str) -> None:
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    d.create("x")
    d.create("gone")
    (store_root / "diff" / "gone" / "f").write_text("data")
    d.cleanup()
    # A crash right after remove() renamed layers/<id>: the rest must go at the next init.
    os.rename(store_root / "layers" / "gone", store_root / "layers" / "gone-removing")
    os.rename(store_root / "diff" / "x", store_root / "diff" / "x-removing")
    os.mkdir(store_root / "diff" / "x")
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    try:
        names = {p.name for top in ("layers", "diff", "mnt") for p in (store_root / top).iterdir()}
        assert names == {"x"}
        assert d.ids() == ["x"]
    finally:
        d.cleanup()


def test_status_rows(driver: aufs.Driver, engine: str) -> None:
    rows = dict(driver.status())
    assert rows["Engine"] == engine
    assert rows["Whiteout Format"] == ("overlay" if engine == "overlay" else "aufs")
    assert rows["Backing Filesystem"] in ("extfs", "xfs", "tmpfs", "btrfs")


def test_fuse_whiteouts_become_aufs_files_after_put(store_root: Path) -> None:
    require_engine("fuse-overlayfs")
    d = aufs.init(store_root, ["aufs.engine=fuse-overlayfs"])
    try:
        d.create("base")
        base = Path(d.get("base"))
        (base / "gone").write_text("x")
        (base / "dir").mkdir()
        (base / "dir" / "old").write_text("x")
        d.create("top", "base")
        mnt = Path(d.get("top"))
        (mnt / "gone").unlink()
        (mnt / "dir" / "old").unlink()
        (mnt / "dir").rmdir()
        (mnt / "dir").mkdir()
        d.put("top")
        diff = store_root / "diff" / "top"
        names = sorted(str(p.relative_to(diff)) for p in diff.rglob("*"))
        assert names == [".wh.gone", "dir", "dir/.wh..wh..opq"]
        assert all(not p.is_char_device() for p in diff.rglob("*"))
        mnt = Path(d.get("top"))
        assert sorted(os.listdir(mnt)) == ["dir"] and os.listdir(mnt / "dir") == []
        d.put("top")
    finally:
        d.cleanup()
    assert fuse_daemons_below(store_root) == []


def _chain(d: aufs.Driver, n: int) -> str:
    parent = ""
    for i in range(n):
        layer = f"l{i:03d}"
        d.create(layer, parent)
        Path(d.layout.diff(layer), f"f{i:03d}").touch()
        parent = layer
    return parent


@pytest.mark.slow
def test_500_layer_chain_on_overlay(store_root: Path) -> None:
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        top = _chain(d, 501)  # the top layer's rw branch over 500 lower layers
        mnt = d.get(top)
        assert len(os.listdir(mnt)) == 501
        d.put(top)
    finally:
        d.cleanup()


def test_legacy_overlay_mount_with_short_links(store_root: Path) -> None:
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        assert isinstance(d.engine, OverlayEngine)
        d.engine.caps = OverlayCaps(new_api=False, extra_options=d.engine.caps.extra_options)
        top = _chain(d, 120)  # ~120 absolute paths overflow a page of mount options
        branches = d._branches(top, d.parents(top))
        with pytest.raises(ValueError):
            from aufs.union.overlay import overlay_specs

            overlay_specs(branches, d.engine.caps)
        mnt = d.get(top)
        assert len(os.listdir(mnt)) == 120
        assert len(os.listdir(d.layout.links_dir)) == 119  # one per lower layer
        d.put(top)
        chain = d.parents(top)
        d.remove(top)
        for layer_id in chain:  # nearest first: each is a leaf by the time it goes
            d.remove(layer_id)
        assert os.listdir(d.layout.links_dir) == []  # removed with their layers
    finally:
        d.cleanup()
