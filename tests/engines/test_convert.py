"""``aufs convert``: a store's whiteouts rewritten in place, both ways, with every layer's
``changes`` and ``diff`` the same before and after, and each engine mounting the result."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

import aufs
from aufs.convert import ConversionPendingError, convert, pending
from aufs.graphdriver import DriverError, LayerInUseError
from aufs.layer_format import normalize_layer
from aufs.store import meta
from aufs.store.layout import Layout
from aufs.whiteout import OVERLAY_OPAQUE_XATTR, has_opaque_xattr
from tests.conftest import require_engine
from tests.engines.test_convert_support import (
    BASE,
    CTR,
    HOUSEKEEPING,
    IMAGE,
    build_docker_store,
    driver_listing,
    housekeeping_of,
    snapshot,
    store_listing,
    union_tree,
)

EXTRA = "extra"  # a layer written through a fuse-overlayfs union
EXTRA2 = "extra2"  # and one written through a kernel overlayfs union


def change_through_union(top: Path) -> None:
    """Deletions, an opaque directory, a copy-up, a rename: whiteouts the engine makes."""
    (top / "etc" / "passwd").unlink()
    (top / "etc" / "group").write_text("root:x:0:\n")
    subprocess.run(["rm", "-rf", str(top / "usr" / "lib")], check=True)
    (top / "usr" / "lib").mkdir()  # over a deleted dir: opaque
    (top / "usr" / "lib" / "new.so").write_bytes(b"\0" * 100)
    os.chmod(top / "etc", 0o751)
    os.rename(top / "opt" / "app" / "log", top / "opt" / "app" / "log.old")
    with open(top / "etc" / "hosts", "a") as f:  # a copy-up (not of a hard link: the
        f.write("127.0.0.1 localhost\n")      # fuse-overlayfs 1.10 loses those)


def change_again_through_union(top: Path) -> None:
    """The same kinds of change, on top of :func:`change_through_union`'s."""
    (top / "etc" / "group").unlink()
    subprocess.run(["rm", "-rf", str(top / "usr" / "share")], check=True)
    (top / "usr" / "share").mkdir()
    (top / "usr" / "share" / "zoneinfo").write_text("UTC\n")
    os.rename(top / "opt" / "app" / "log.old", top / "opt" / "app" / "log.older")
    with open(top / "etc" / "resolv.conf", "a") as f:
        f.write("nameserver 10.0.0.1\n")
    os.chmod(top / "tmp", 0o1777)


def unions(d: aufs.Driver) -> dict[str, dict[str, tuple[object, ...]]]:
    """What every layer's union shows."""
    out = {}
    for layer in d.ids():
        try:
            out[layer] = union_tree(d.get(layer))
        finally:
            d.put(layer)
    return out


def markers(root: Path) -> dict[str, int]:
    """Counts of whiteout forms in the diff dirs: AUFS files, overlay devices and xattrs."""
    counts = {"aufs": 0, "overlay": 0}
    for dirpath, dirnames, filenames in os.walk(root / "diff"):
        if ".wh..wh." in dirpath:
            continue
        if has_opaque_xattr(dirpath):
            counts["overlay"] += 1
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if name.startswith(".wh."):
                counts["aufs"] += 1
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                counts["overlay"] += 1
    return counts


def private_xattrs(root: Path) -> dict[str, int]:
    """How many entries of the diff dirs carry each engine's private attributes."""
    counts = {"user.fuseoverlayfs.": 0, "trusted.overlay.": 0}
    for dirpath, dirnames, filenames in os.walk(root / "diff"):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            if os.path.islink(path):
                continue
            for prefix in counts:
                counts[prefix] += any(x.startswith(prefix) for x in os.listxattr(path))
    return counts


def open_store(root: Path, engine: str) -> aufs.Driver:
    require_engine(engine)
    return aufs.init(root, [f"aufs.engine={engine}"])


@pytest.fixture
def docker_store(tmp_path: Path) -> Path:
    """The synthetic Docker store plus a layer changed through a fuse-overlayfs union
    (whiteouts and an opaque dir made by the engine, then normalized at unmount)."""
    root = tmp_path / "aufs"
    build_docker_store(root)
    d = open_store(root, "fuse-overlayfs")
    try:
        d.create(EXTRA, CTR)
        try:
            change_through_union(Path(d.get(EXTRA)))
        finally:
            d.put(EXTRA)
    finally:
        d.cleanup()
    return root


def test_convert_to_overlay_and_back(docker_store: Path) -> None:
    root = docker_store
    d = open_store(root, "fuse-overlayfs")
    try:
        before = driver_listing(d)
        views = unions(d)
    finally:
        d.cleanup()
    assert markers(root)["aufs"] > 0 and markers(root)["overlay"] == 0
    housekeeping = housekeeping_of(root / "diff")
    assert len([p for p in housekeeping if p.count("/") == 1]) == 3 * len(HOUSEKEEPING)

    # fuse-overlayfs's own attributes, as a layer written by fuse-overlayfs directly (or
    # before our engine dropped them at unmount: aufs.union.fuse_tidy) holds them
    copied = next(p for p in sorted((root / "diff" / EXTRA).rglob("*"))
                  if p.is_file() and not p.is_symlink() and not p.name.startswith(".wh."))
    os.setxattr(copied, "user.fuseoverlayfs.origin", b"somewhere\0")
    assert private_xattrs(root)["user.fuseoverlayfs."] > 0
    report = convert(root, "overlay")
    assert private_xattrs(root)["user.fuseoverlayfs."] == 0
    assert (report.source, report.target, report.resumed) == ("aufs", "overlay", False)
    assert report.layers == report.converted == 5
    assert report.set_aside == 3 * len(HOUSEKEEPING)  # image, init and container branches
    assert report.rewritten == markers(root)["overlay"] > 0
    assert markers(root)["aufs"] == 0
    assert housekeeping_of(root / "diff") == {}
    attic = root / ".aufs" / "attic"
    assert {f"{k.split('/', 1)[0]}/{k.split('/', 1)[1]}" for k in housekeeping_of(attic)} == set(
        housekeeping)
    assert housekeeping_of(attic) == housekeeping  # byte for byte
    assert json.loads((root / ".aufs" / "store.json").read_text())["whiteouts"] == "overlay"
    assert not (root / ".aufs" / "convert.json").exists()
    assert store_listing(root) == before

    d = open_store(root, "overlay")  # kernel overlayfs reads it now
    try:
        assert dict(d.status())["Whiteout Format"] == "overlay"
        assert driver_listing(d) == before
        assert unions(d) == views
        # ... and writes it: a layer made by kernel overlayfs, to convert back.
        d.create(EXTRA2, EXTRA)
        change_again_through_union(Path(d.get(EXTRA2)))
        d.put(EXTRA2)
        before = driver_listing(d)
        views = unions(d)
    finally:
        d.cleanup()

    report = convert(root, "aufs")
    assert (report.source, report.target, report.layers) == ("overlay", "aufs", 6)
    assert private_xattrs(root)["trusted.overlay."] == 0
    assert report.restored == 3 * len(HOUSEKEEPING) and report.set_aside == 0
    assert markers(root)["overlay"] == 0
    assert housekeeping_of(root / "diff") == housekeeping
    assert not attic.exists()
    d = aufs.init(root)
    try:
        assert d.engine.name == "fuse-overlayfs" and d.whiteouts.name == "aufs"
        assert driver_listing(d) == before
        assert unions(d) == views
    finally:
        d.cleanup()


def test_converting_to_the_format_a_store_has_changes_nothing(docker_store: Path) -> None:
    before = snapshot(docker_store / "diff")
    report = convert(docker_store, "aufs")
    assert (report.rewritten, report.set_aside, report.restored) == (0, 0, 0)
    assert snapshot(docker_store / "diff") == before


def test_whiteout_metadata_survives_the_round_trip(docker_store: Path) -> None:
    wh = docker_store / "diff" / IMAGE / "etc" / ".wh.shadow"
    os.chown(wh, 7, 8, follow_symlinks=False)
    st = wh.lstat()
    convert(docker_store, "overlay")
    dev = (docker_store / "diff" / IMAGE / "etc" / "shadow").lstat()
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == 0
    assert (dev.st_uid, dev.st_gid, dev.st_mtime_ns) == (7, 8, st.st_mtime_ns)
    assert stat.S_IMODE(dev.st_mode) == stat.S_IMODE(st.st_mode)
    assert has_opaque_xattr(str(docker_store / "diff" / IMAGE / "usr" / "share" / "doc"))
    convert(docker_store, "aufs")
    back = wh.lstat()
    assert stat.S_ISREG(back.st_mode)
    assert (back.st_uid, back.st_gid, back.st_mtime_ns, back.st_mode) == (
        7, 8, st.st_mtime_ns, st.st_mode)
    with pytest.raises(OSError):
        os.getxattr(docker_store / "diff" / IMAGE / "usr" / "share" / "doc",
                    OVERLAY_OPAQUE_XATTR)


@pytest.mark.parametrize("engine", ["fuse-overlayfs", "overlay"])
def test_convert_refuses_while_a_layer_is_mounted_or_held(docker_store: Path,
                                                          engine: str) -> None:
    if engine == "overlay":
        convert(docker_store, "overlay")
    d = open_store(docker_store, engine)
    try:
        other = "aufs" if engine == "overlay" else "overlay"
        d.get(CTR)
        before = snapshot(docker_store / "diff")  # (mounting may set overlay's xattrs)
        with pytest.raises(LayerInUseError, match="mounted"):
            convert(docker_store, other)
        assert snapshot(docker_store / "diff") == before
        d.put(CTR)
        d.get(BASE)  # no union, but in use: its directory is handed out as it is
        before = snapshot(docker_store / "diff")
        with pytest.raises(LayerInUseError, match="in use"):
            convert(docker_store, other)
        assert snapshot(docker_store / "diff") == before
        d.put(BASE)
        assert pending(Layout.at(docker_store)) is None
        assert convert(docker_store, other).converted == 5  # once nothing is in use
    finally:
        d.cleanup()


def test_init_refuses_a_half_converted_store(docker_store: Path) -> None:
    lay = Layout.at(docker_store)
    os.makedirs(lay.private_dir, exist_ok=True)  # (cleanup of a Docker store removes it)
    Path(lay.convert_journal).write_text(json.dumps(
        {"version": 1, "to": "overlay", "from": "aufs", "done": [BASE]}))
    with pytest.raises(ConversionPendingError, match=r"aufs --root .* convert --to overlay"):
        aufs.init(docker_store)
    report = convert(docker_store, "overlay")
    assert report.resumed and report.converted == 4  # BASE was done already
    d = open_store(docker_store, "overlay")
    d.cleanup()


@pytest.mark.parametrize("journal", [
    json.dumps({"version": 1, "to": "overlay", "from": "aufs", "done": [BASE]}),
    json.dumps({"version": 2, "to": "overlay", "from": "aufs"}) + f"\n{BASE}\nabc",
], ids=["version-1", "torn-last-line"])
def test_a_resumed_run_keeps_what_it_does_in_its_journal(
        docker_store: Path, journal: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run writes the journal anew before its first layer: its appends land
    after whole lines of the version it writes (appended to a version-1 journal they were
    lost; after a torn line, the next id was glued onto it and the journal unreadable)."""
    lay = Layout.at(docker_store)
    os.makedirs(lay.private_dir, exist_ok=True)
    Path(lay.convert_journal).write_text(journal)
    real = normalize_layer
    calls: list[str] = []

    def dies_at_the_second(layout: Layout, layer_id: str, *args: object) -> object:
        calls.append(layer_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between two layers
        return real(layout, layer_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("aufs.convert.normalize_layer", dies_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        convert(docker_store, "overlay")
    resumed = meta.read_journal(lay.convert_journal)
    assert resumed is not None and resumed.done == (BASE, calls[0])
    monkeypatch.setattr("aufs.convert.normalize_layer", real)
    report = convert(docker_store, "overlay")
    assert report.resumed and report.converted == 3  # BASE and the first one kept
    open_store(docker_store, "overlay").cleanup()


def test_bad_arguments(tmp_path: Path, docker_store: Path) -> None:
    with pytest.raises(ValueError, match="unknown whiteout format"):
        convert(docker_store, "btrfs")
    with pytest.raises(DriverError, match="not a layer store"):
        convert(tmp_path / "nothing-here", "overlay")


def test_layers_migrated_by_symlink_from_another_filesystem(tmp_path: Path,
                                                            tmpfs: Path) -> None:
    """Their housekeeping goes to the attic by copy (rename gives EXDEV) and comes back."""
    graph = tmpfs / "graph"
    for image, parent in (("img0", ""), ("img1", "img0")):
        layer = graph / image / "layer"
        (layer / "d").mkdir(parents=True)
        (layer / "d" / image).write_text(image)
        (graph / image / "json").write_text(json.dumps({"id": image, "parent": parent}))
    (graph / "img1" / "layer" / "d" / ".wh.img0").touch()
    (graph / "img1" / "layer" / ".wh..wh.plnk").mkdir()
    (graph / "img1" / "layer" / ".wh..wh.plnk" / "77.1").write_text("pl")
    old = tmp_path / "old"
    old.mkdir()
    (old / "graph").symlink_to(graph)
    root = tmp_path / "store"
    d = open_store(root, "fuse-overlayfs")
    try:
        d.migrate(old, lambda p: None)
        assert os.path.islink(d.layout.diff("img1"))
        before = driver_listing(d)
        views = unions(d)
    finally:
        d.cleanup()
    convert(root, "overlay")
    assert not (graph / "img1" / "layer" / ".wh..wh.plnk").exists()
    assert (root / ".aufs" / "attic" / "img1" / ".wh..wh.plnk" / "77.1").read_text() == "pl"
    assert stat.S_ISCHR((graph / "img1" / "layer" / "d" / "img0").lstat().st_mode)
    d = open_store(root, "overlay")
    try:
        assert driver_listing(d) == before
        assert unions(d) == views
    finally:
        d.cleanup()
    convert(root, "aufs")
    assert (graph / "img1" / "layer" / ".wh..wh.plnk" / "77.1").read_text() == "pl"
    assert (graph / "img1" / "layer" / "d" / ".wh.img0").is_file()
    assert store_listing(root) == before


def test_a_docker_store_converts_without_ever_being_opened(tmp_path: Path) -> None:
    root = tmp_path / "aufs"
    build_docker_store(root)
    before = store_listing(root)
    report = convert(root, "overlay")
    assert str(report).startswith(f"converted {root} from aufs to overlay whiteouts: 4 of 4")
    assert "9 AUFS housekeeping entries set aside" in str(report)
    assert store_listing(root) == before
    d = open_store(root, "overlay")
    try:
        assert union_tree(d.get(CTR))["etc/passwd"][-1]  # mounted and readable
        d.put(CTR)
    finally:
        d.cleanup()


def test_an_unreadable_journal_is_refused_by_init_and_redone_by_convert(
        docker_store: Path) -> None:
    before = store_listing(docker_store)
    os.makedirs(Layout.at(docker_store).private_dir, exist_ok=True)
    Path(Layout.at(docker_store).convert_journal).write_text("{torn")
    with pytest.raises(ConversionPendingError):
        aufs.init(docker_store)
    report = convert(docker_store, "overlay")
    assert report.converted == 5 and not report.resumed
    assert store_listing(docker_store) == before


def test_housekeeping_with_no_place_to_go_back_to_is_dropped(docker_store: Path) -> None:
    """Back to aufs, an attic entry whose directory the layer lost, or whose name the
    layer has since got (a file made through a kernel overlayfs union), is dropped."""
    convert(docker_store, "overlay")
    ctr = docker_store / "diff" / CTR
    (ctr / ".wh..wh.aufs").write_text("made in overlay format")
    attic = docker_store / ".aufs" / "attic"
    (attic / CTR / "gone-dir" / ".wh..wh.plnk").mkdir(parents=True)
    (attic / "removed-layer" / ".wh..wh.plnk").mkdir(parents=True)  # its layer is gone
    report = convert(docker_store, "aufs")
    assert report.restored == 3 * len(HOUSEKEEPING) - 1
    assert (ctr / ".wh..wh.aufs").read_text() == "made in overlay format"
    assert not (ctr / "gone-dir").exists() and not attic.exists()
