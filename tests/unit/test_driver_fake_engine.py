"""The driver over a recording fake engine (tests/fake_engine.py): what it asks the engine
and what it leaves in the store, with no mount and no root needed."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from aufs.archive import Change, ChangeKind
from aufs.errors import LayerInUseError, LayerNotFoundError, StoreCorruptError
from aufs.union.base import Branches
from tests.fake_engine import driver_with_fake_engine


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_get_asks_for_the_chain_nearest_first(tmp_path: Path) -> None:
    d, engine = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    d.create("mid", "base")
    d.create("top", "mid")
    assert d.get("base") == d.layout.diff("base")  # no parent: no union
    assert engine.calls == []
    assert d.get("top", mount_label="system_u:object_r:svirt_sandbox_file_t:s0") == \
        d.layout.mnt("top")
    assert engine.calls == [("mount", Branches(
        target=d.layout.mnt("top"), rw=d.layout.diff("top"),
        lowers=(d.layout.diff("mid"), d.layout.diff("base")), work=d.layout.work("top"),
        label="system_u:object_r:svirt_sandbox_file_t:s0"))]


def test_a_migrated_layer_gets_its_work_dir_beside_its_data(tmp_path: Path) -> None:
    d, engine = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    elsewhere = tmp_path / "docker" / "graph" / "child" / "layer"
    elsewhere.mkdir(parents=True)
    os.symlink(elsewhere, d.layout.diff("child"))  # what migrate leaves when it cannot rename
    d.create("child", "base")
    d.get("child")
    (_, branches), = engine.calls
    assert isinstance(branches, Branches)
    assert branches.work == str(elsewhere.parent / ".layer.aufs-work")


@pytest.mark.parametrize("target", [
    "/etc",                                   # a host directory as the rw branch
    "{t}/docker/graph/other/layer",           # another id's data
    "{t}/docker/graph/child/../child/layer",  # not normalized
    "graph/child/layer",                      # relative: resolved against diff/
    "{t}/docker/graph/child/swapped",         # the right shape, a symlink to /etc below
])
def test_a_tampered_migration_symlink_is_refused_everywhere(tmp_path: Path, target: str) -> None:
    """``diff/<id>`` may be a symlink only as migrate leaves one; anything else would stack
    or read a directory outside the store: every entry point refuses it, naming it."""
    d, engine = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    for name in ("child", "other"):
        (tmp_path / "docker" / "graph" / name / "layer").mkdir(parents=True)
    os.symlink("/etc", tmp_path / "docker" / "graph" / "child" / "swapped")
    if target.endswith("swapped"):  # …/graph/child/layer itself a symlink to /etc
        (tmp_path / "docker" / "graph" / "child" / "layer").rmdir()
        os.symlink("/etc", tmp_path / "docker" / "graph" / "child" / "layer")
        target = "{t}/docker/graph/child/layer"
    os.symlink(target.format(t=tmp_path), d.layout.diff("child"))
    d.create("child", "base")
    for call in (lambda: d.get("child"), lambda: d.diff("child").close(),
                 lambda: d.changes("child"), lambda: d.diff_size("child")):
        with pytest.raises(StoreCorruptError, match="not where a migration leaves a layer"):
            call()
    assert engine.calls == []  # nothing was mounted


def test_remove_asks_the_engine_to_forget_and_renames_first(tmp_path: Path) -> None:
    d, engine = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    d.create("top", "base")
    with pytest.raises(LayerInUseError):
        d.remove("base")
    assert d.exists("base") and engine.calls == []
    d.remove("top")
    assert engine.calls == [("forget", d.layout.diff("top"))]  # nothing mounted: no unmount
    for path in (d.layout.layers("top"), d.layout.diff("top"), d.layout.mnt("top")):
        assert not os.path.lexists(path)
        assert not os.path.lexists(path + "-removing")
    with pytest.raises(LayerNotFoundError):
        d.remove("top")


def test_status_ends_with_the_engines_own_rows(tmp_path: Path) -> None:
    d, _ = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    assert d.status() == [
        ("Root Dir", d.root), ("Backing Filesystem", "<unknown>"), ("Dirs", "1"),
        ("Dirperm1 Supported", "false"), ("Engine", "recording"),
        ("Whiteout Format", "aufs"), ("Recorded Calls", "0")]


def test_apply_diff_and_changes_need_no_mount(tmp_path: Path) -> None:
    d, engine = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    assert d.apply_diff("base", "", _tar({"etc/hostname": b"box\n"})) == 4
    d.create("top", "base")
    assert d.apply_diff("top", "base", _tar({"etc/hostname": b"other\n", "new": b""})) == 6
    assert d.changes("top") == [Change("/etc", ChangeKind.MODIFY),
                                Change("/etc/hostname", ChangeKind.MODIFY),
                                Change("/new", ChangeKind.ADD)]
    assert engine.calls == []


@pytest.mark.parametrize("meanwhile", ["remove", "apply_diff"])
def test_a_diff_read_while_its_layer_goes_ends_in_an_error_not_a_short_tar(
        tmp_path: Path, meanwhile: str) -> None:
    """The walk is lazy: a layer removed (or replaced by an apply) while its diff is read
    must not yield a complete-looking tar of what happened to be left."""
    d, _ = driver_with_fake_engine(tmp_path / "store")
    d.create("base")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(3000):
            info = tarfile.TarInfo(f"d{i // 100}/f{i}")
            info.size = 100
            tar.addfile(info, io.BytesIO(b"x" * 100))
    d.apply_diff("base", "", io.BytesIO(buf.getvalue()))
    stream = d.diff("base")
    try:
        stream.read(4096)  # started: the walk has begun
        if meanwhile == "remove":
            d.remove("base")
        else:
            d.apply_diff("base", "", io.BytesIO(tar_of({"new": b"1"})))
        with pytest.raises(LayerNotFoundError, match="removed or replaced while"):
            while stream.read(1 << 20):
                pass
    finally:
        stream.close()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
