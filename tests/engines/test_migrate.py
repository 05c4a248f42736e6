"""Pre-0.7 Docker graph migration (the seed's ``Migrate``), on every runnable engine."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import aufs
from aufs.graphdriver import DriverError, InvalidLayerIDError, LayerNotFoundError
from aufs.migrate import INIT_LAYER_ENTRIES, setup_init_layer

# Listed child first: "a2"'s parent is "b1", whose parent is "c0".
CHAIN = ("c0", "b1", "a2")
CTR = "ctr1"


def make_graph(base: Path, data: Path | None = None) -> None:
    """A pre-0.7 graph at ``base``; layer and rw directories live under ``data`` if given
    (``base/graph`` and ``base/containers`` are then symlinks to it)."""
    data = data or base
    base.mkdir(parents=True, exist_ok=True)
    graph, containers = data / "graph", data / "containers"
    graph.mkdir(parents=True)
    containers.mkdir(parents=True)
    if data != base:
        (base / "graph").symlink_to(graph)
        (base / "containers").symlink_to(containers)
    parent = ""
    for image in CHAIN:
        (graph / image / "layer" / "etc").mkdir(parents=True)
        (graph / image / "layer" / f"from-{image}").write_text(image)
        (graph / image / "layer" / "etc" / "shared").write_text(image)
        meta = {"id": image, "created": "2013-10-01T00:00:00Z",
                **({"parent": parent} if parent else {})}
        (graph / image / "json").write_text(json.dumps(meta))
        parent = image
    (graph / "_tmp").mkdir()  # Docker's scratch dir: no layer, not an image
    rw = containers / CTR / "rw"
    rw.mkdir(parents=True)
    (rw / "written-by-container").write_text("hello")
    (rw / ".wh.from-c0").touch()  # the container deleted a file of the base image
    (rw / ".wh..wh.aufs").touch()  # AUFS housekeeping: in no union, in any store format
    (rw / ".wh..wh.plnk").mkdir()
    (rw / ".wh..wh.plnk" / "1234.5").write_text("pseudo-link")
    (containers / CTR / "config.json").write_text(json.dumps({"ID": CTR, "Image": "a2"}))
    (base / "repositories").write_text('{"Repositories": {}}')


def recording_setup_init() -> tuple[list[str], Callable[[str], None]]:
    prepared: list[str] = []

    def setup_init(path: str) -> None:
        prepared.append(path)
        Path(path, ".dockerinit").write_text("init")
        Path(path, "etc", "hostname").write_text("")

    return prepared, setup_init


def container_view(driver: aufs.Driver) -> dict[str, str]:
    root = Path(driver.get(CTR))
    try:
        out = {}
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = path.read_text()
            else:
                out[str(path.relative_to(root))] = "<dir>"
        return out
    finally:
        driver.put(CTR)


EXPECTED_VIEW = {
    ".dockerinit": "init", "etc": "<dir>", "etc/hostname": "", "etc/shared": "a2",
    "from-a2": "a2", "from-b1": "b1", "written-by-container": "hello",
}


def assert_registered(driver: aufs.Driver) -> None:
    assert driver.parents("c0") == []
    assert driver.parents("a2") == ["b1", "c0"]
    assert driver.parents(f"{CTR}-init") == ["a2", "b1", "c0"]
    assert driver.parents(CTR) == [f"{CTR}-init", "a2", "b1", "c0"]
    assert (Path(driver.root) / "layers" / CTR).read_text() == "ctr1-init\na2\nb1\nc0\n"
    assert {*CHAIN, CTR, f"{CTR}-init"} <= set(driver.ids())


def test_no_graph_is_a_noop(driver: aufs.Driver, tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "containers" / "c" / "rw").mkdir(parents=True)
    (old / "repositories").write_text("{}")
    driver.migrate(old, lambda p: None)
    assert driver.ids() == []
    assert (old / "repositories").exists() and (old / "containers" / "c" / "rw").is_dir()


def test_migrate_images_and_container(driver: aufs.Driver, tmp_path: Path) -> None:
    old = tmp_path / "old"
    make_graph(old)
    prepared, setup_init = recording_setup_init()

    driver.migrate(str(old), setup_init)

    assert_registered(driver)
    assert prepared == [str(Path(driver.root) / "mnt" / f"{CTR}-init")]
    assert not driver.mounted(f"{CTR}-init") and driver.refcount(f"{CTR}-init") == 0
    assert not (old / "repositories").exists()
    assert (old / "repositories-aufs").read_text() == '{"Repositories": {}}'
    for layer_id in (*CHAIN, CTR):  # renamed, not copied
        assert not os.path.islink(driver.layout.diff(layer_id))
    for image in CHAIN:
        assert not (old / "graph" / image / "layer").exists()
        assert (old / "graph" / image / "json").exists()  # metadata stays for Docker
    assert not (old / "containers" / CTR / "rw").exists()
    assert (old / "graph" / "_tmp").is_dir() and not driver.exists("_tmp")
    # Housekeeping stays AUFS's: in place in an aufs store, set aside in an overlay one.
    keeper = Path(driver.layout.attic(CTR) if driver.whiteouts.name == "overlay"
                  else driver.layout.diff(CTR))
    assert (keeper / ".wh..wh.plnk" / "1234.5").read_text() == "pseudo-link"
    assert container_view(driver) == EXPECTED_VIEW

    # A second run changes nothing.
    driver.migrate(old, setup_init)
    assert len(prepared) == 1
    assert container_view(driver) == EXPECTED_VIEW


def test_rename_that_fails_falls_back_to_a_symlink(driver: aufs.Driver, tmp_path: Path,
                                                   tmpfs: Path) -> None:
    old = tmp_path / "old"
    make_graph(old, data=tmpfs)  # every layer is on another filesystem: rename -> EXDEV
    try:
        driver.migrate(old, recording_setup_init()[1])
        assert_registered(driver)
        for image in CHAIN:
            diff = driver.layout.diff(image)
            assert os.path.islink(diff)
            assert os.readlink(diff) == str(old / "graph" / image / "layer")
        assert os.readlink(driver.layout.diff(CTR)) == str(old / "containers" / CTR / "rw")
        assert container_view(driver) == EXPECTED_VIEW
        # The container's rw branch is the symlinked directory: writes land there.
        root = Path(driver.get(CTR))
        try:
            (root / "new-file").write_text("new")
            (root / "from-b1").unlink()
        finally:
            driver.put(CTR)
        rw = tmpfs / "containers" / CTR / "rw"
        assert (rw / "new-file").read_text() == "new"
        changes = {str(c) for c in driver.changes(CTR)}
        assert {"A /new-file", "D /from-b1", "D /from-c0"} <= changes
    finally:
        driver.cleanup()


def test_second_run_replaces_the_symlinks_of_a_failed_rename(driver: aufs.Driver,
                                                             tmp_path: Path) -> None:
    # While a union of the store is mounted, the store root's private bind cannot be
    # released, and renames into it fail (EXDEV): the first run can only symlink.
    driver.create("other-base")
    driver.create("other", "other-base")
    driver.get("other")
    old = tmp_path / "old"
    make_graph(old)
    prepared, setup_init = recording_setup_init()
    try:
        driver.migrate(old, setup_init)
        assert_registered(driver)
        assert all(os.path.islink(driver.layout.diff(i)) for i in (*CHAIN, CTR))
        assert (old / "graph" / "a2" / "layer" / "from-a2").exists()
        assert container_view(driver) == EXPECTED_VIEW  # usable through the symlinks
        root = Path(driver.get(CTR))
        try:
            (root / "written-later").write_text("later")
            (root / "from-a2").unlink()
        finally:
            driver.put(CTR)
    finally:
        driver.put("other")
    driver.migrate(old, setup_init)  # nothing mounted now: the renames succeed
    for layer_id in (*CHAIN, CTR):
        assert not os.path.islink(driver.layout.diff(layer_id))
        assert os.path.isdir(driver.layout.diff(layer_id))
    assert not (old / "graph" / "a2" / "layer").exists()
    assert not (old / "containers" / CTR / "rw").exists()
    assert len(prepared) == 1
    view = container_view(driver)
    assert view.pop("written-later") == "later" and view.pop("from-a2", None) is None
    assert view == {k: v for k, v in EXPECTED_VIEW.items() if k != "from-a2"}


def test_an_interrupted_run_is_finished_by_the_next(driver: aufs.Driver,
                                                    tmp_path: Path) -> None:
    """The states a kill can leave: an image registered before its data moved, a
    container's init layer made but the container not yet registered."""
    old = tmp_path / "old"
    make_graph(old)
    for image in CHAIN:  # registered, data still in the graph
        driver.create(image, {"a2": "b1", "b1": "c0"}.get(image, ""))
    driver.create(f"{CTR}-init", "a2")  # setup_init did not run (or did not finish)
    prepared, setup_init = recording_setup_init()
    driver.migrate(old, setup_init)
    assert_registered(driver)
    assert len(prepared) == 1
    assert not (old / "graph" / "c0" / "layer").exists()
    assert container_view(driver) == EXPECTED_VIEW


def test_a_failing_setup_init_leaves_the_container_to_the_next_run(
        driver: aufs.Driver, tmp_path: Path) -> None:
    old = tmp_path / "old"
    make_graph(old)

    def broken(path: str) -> None:
        raise RuntimeError("no init binary")

    with pytest.raises(RuntimeError):
        driver.migrate(old, broken)
    assert not driver.exists(CTR)
    assert not driver.mounted(f"{CTR}-init") and driver.refcount(f"{CTR}-init") == 0
    assert (old / "containers" / CTR / "rw" / "written-by-container").exists()
    prepared, setup_init = recording_setup_init()
    driver.migrate(old, setup_init)
    assert len(prepared) == 1
    assert container_view(driver) == EXPECTED_VIEW


@pytest.mark.parametrize("damage", ["missing-parent", "unknown-image", "bad-id", "bad-json"])
def test_a_graph_that_cannot_migrate_whole_is_left_untouched(
        driver: aufs.Driver, tmp_path: Path, damage: str) -> None:
    old = tmp_path / "old"
    make_graph(old)
    if damage == "missing-parent":
        (old / "graph" / "b1" / "json").write_text(json.dumps({"id": "b1", "parent": "zz"}))
    elif damage == "unknown-image":
        (old / "containers" / CTR / "config.json").write_text(json.dumps({"Image": "nope"}))
    elif damage == "bad-id":
        (old / "graph" / "bad id" / "layer").mkdir(parents=True)
        (old / "graph" / "bad id" / "json").write_text("{}")
    else:
        (old / "graph" / "c0" / "json").write_text("{not json")
    before = sorted(str(p.relative_to(old)) for p in old.rglob("*"))
    with pytest.raises(DriverError if damage != "bad-id" else InvalidLayerIDError):
        driver.migrate(old, lambda p: None)
    assert sorted(str(p.relative_to(old)) for p in old.rglob("*")) == before
    assert driver.ids() == []


def test_images_may_build_on_layers_already_in_the_store(driver: aufs.Driver,
                                                          tmp_path: Path) -> None:
    driver.create("c0")
    graph = tmp_path / "old" / "graph"
    (graph / "b1" / "layer").mkdir(parents=True)
    (graph / "b1" / "json").write_text(json.dumps({"id": "b1", "parent": "c0"}))
    driver.migrate(tmp_path / "old", lambda p: None)
    assert driver.parents("b1") == ["c0"]
    with pytest.raises(LayerNotFoundError):
        driver.parents("a2")


def test_dockers_setup_init_layer(driver: aufs.Driver, tmp_path: Path) -> None:
    """The ``setup_init`` Docker passed: mount points and files, over whatever the image
    had there, never through a symlink of the image."""
    old = tmp_path / "old"
    make_graph(old)
    top = old / "graph" / "a2" / "layer"
    (top / "etc" / "hosts").write_text("from the image")
    (top / "proc").write_text("a file where a dir belongs")
    victim = tmp_path / "victim"
    victim.mkdir()
    (top / "sys").symlink_to(victim)  # an absolute symlink: never followed
    driver.migrate(old, setup_init_layer)
    root = Path(driver.get(f"{CTR}-init"))
    try:
        for rel, kind in INIT_LAYER_ENTRIES:
            path = root / rel
            if kind == "dir":
                assert path.is_dir() and not path.is_symlink(), rel
            elif kind == "file":
                assert path.is_file() and path.read_bytes() == b"", rel
            else:
                assert os.readlink(path) == kind
    finally:
        driver.put(f"{CTR}-init")
    assert list(victim.iterdir()) == []
    changes = {str(c) for c in driver.changes(f"{CTR}-init")}
    assert {"C /etc/hosts", "C /proc", "C /sys", "A /.dockerinit", "A /etc/mtab"} <= changes


def test_a_layer_that_is_a_symlink_is_refused_before_anything_moves(
        driver: aufs.Driver, tmp_path: Path) -> None:
    """``graph/<id>/layer`` a symlink to a directory outside the graph: neither that
    directory's whiteouts are converted nor the symlink moved into the store."""
    old = tmp_path / "old"
    make_graph(old)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".wh.victim").touch()
    (outside / "file").write_text("mine")
    layer = old / "graph" / "b1" / "layer"
    layer.rename(tmp_path / "b1-layer")
    layer.symlink_to(outside)
    before = sorted((str(p), p.lstat().st_mode) for p in (*old.rglob("*"), *outside.rglob("*")))
    with pytest.raises(DriverError, match="not a directory"):
        driver.migrate(old, lambda p: None)
    assert sorted((str(p), p.lstat().st_mode)
                  for p in (*old.rglob("*"), *outside.rglob("*"))) == before
    assert driver.ids() == []
