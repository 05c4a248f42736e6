"""A tampered store cannot be turned against its host (issue 13, section 2).

Every id read from the store's own files is validated before it is joined into a path;
``layers/<id>`` must be a regular file; a chain that is not a chain is a
``StoreCorruptError`` naming the file and line — never a host directory stacked into a
union, never a raw exception.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aufs
from aufs.graphdriver import StoreCorruptError
from tests.conftest import require_engine


@pytest.fixture
def store(overlay_driver: aufs.Driver) -> aufs.Driver:
    return overlay_driver


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    host = tmp_path / "outside"
    host.mkdir()
    (host / "hostfile").write_text("secret\n")
    return host


def _chain(d: aufs.Driver, id: str, body: bytes) -> None:
    Path(d.layout.layers(id)).write_bytes(body)


def test_a_parent_that_climbs_out_is_not_stacked_into_the_union(
        store: aufs.Driver, outside: Path) -> None:
    store.create("a")
    store.create("b", "a")
    _chain(store, "b", b"a\n../../outside\n")
    with pytest.raises(StoreCorruptError) as err:
        store.get("b")
    assert "layers/b" in str(err.value) and "line 2" in str(err.value)
    assert not store.mounted("b")
    for read in (store.changes, store.diff_size, store.diff):
        with pytest.raises(StoreCorruptError):
            read("b")
    assert sorted(os.listdir(outside)) == ["hostfile"]


# -- damaged layer files: only the layers standing on them fail, each naming the file ----

DAMAGE: list[tuple[str, bytes, str]] = [
    # (what, content of layers/b, what the error must say)
    ("absolute path", b"/etc\n", "line 1: invalid layer id '/etc'"),
    ("dot-dot", b"..\n", "line 1: invalid layer id '..'"),
    ("a -removing id", b"a-removing\n", "line 1: invalid layer id"),
    ("non-UTF-8", b"a\n\xff\xfe\n", "line 2: not UTF-8"),
    ("a cycle through itself", b"b\n", "line 1: b is the layer itself"),
    ("an id twice", b"a\na\n", "line 2: a is listed twice"),
    ("a missing parent", b"nosuch\n", "line 1: parent nosuch does not exist"),
    ("a chain the parent disagrees with", b"a\nc\n", "disagrees with"),
]


@pytest.mark.parametrize(("what", "body", "says"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_layer_file_names_itself_and_spares_the_others(
        store: aufs.Driver, what: str, body: bytes, says: str) -> None:
    store.create("a")
    store.create("b", "a")
    store.create("c")
    store.create("other", "a")
    _chain(store, "b", body)
    for use in (store.parents, store.get, store.changes, store.diff_size, store.diff,
                lambda i: store.create("child", i)):
        with pytest.raises(StoreCorruptError) as err:
            use("b")
        assert "layers/b" in str(err.value) and says in str(err.value), str(err.value)
    assert not store.exists("child")
    # the others work
    assert store.parents("other") == ["a"]
    store.get("other")
    store.put("other")
    assert store.diff_size("c") == 0
    assert sorted(store.ids()) == ["a", "b", "c", "other"]
    # and the damaged layer can be removed
    store.remove("b")
    assert not store.exists("b")
    assert sorted(os.listdir(store.layout.diff_dir)) == ["a", "c", "other"]


@pytest.mark.parametrize("shape", ["directory", "symlink", "fifo", "dangling symlink"])
def test_a_layer_file_that_is_no_regular_file(store: aufs.Driver, outside: Path,
                                               shape: str) -> None:
    store.create("a")
    store.create("b", "a")
    path = Path(store.layout.layers("b"))
    path.unlink()
    (outside / "chain").write_text("a\n")
    if shape == "directory":
        path.mkdir()
        (path / "inside").write_text("x")
    elif shape == "symlink":
        path.symlink_to(outside / "chain")  # would read as a valid chain if followed
    elif shape == "fifo":
        os.mkfifo(path)  # must not hang
    else:
        path.symlink_to(outside / "nothing")
    with pytest.raises(StoreCorruptError) as err:
        store.get("b")
    assert str(path) in str(err.value) and "not a layer file" in str(err.value)
    assert not store.mounted("b")
    store.remove("b")
    assert not os.path.lexists(path) and not os.path.lexists(store.layout.diff("b"))
    assert sorted(os.listdir(outside)) == ["chain", "hostfile"]
    store.get("a")  # the parent is fine
    store.put("a")


def test_a_mount_point_that_is_a_symlink_is_not_followed(store: aufs.Driver,
                                                          outside: Path) -> None:
    store.create("a")
    store.create("b", "a")
    mnt = Path(store.layout.mnt("b"))
    mnt.rmdir()
    mnt.symlink_to(outside)
    with pytest.raises(StoreCorruptError, match="mnt/b: is a symlink"):
        store.get("b")
    assert not os.path.ismount(outside)
    store.remove("b")
    assert sorted(os.listdir(outside)) == ["hostfile"]


def test_a_removal_marker_named_dot_dot_destroys_nothing(tmp_path: Path) -> None:
    """``layers/..-removing`` used to make the next command remove ``diff/..`` — the
    store root — and, with ``diff/`` a symlink to another disk, what lies beside it.
    A ``diff/`` that is a symlink is now refused whole (nothing is read or written
    through it); moved back, the markers are reported and left."""
    require_engine("overlay")
    root = tmp_path / "store"
    d = aufs.init(root, ["aufs.engine=overlay"])
    d.create("a")
    (Path(d.layout.diff("a")) / "data").write_text("keep")
    d.cleanup()
    elsewhere = tmp_path / "disk"
    (elsewhere / "diff").mkdir(parents=True)
    (elsewhere / "precious").write_text("keep")
    os.rename(root / "diff" / "a", elsewhere / "diff" / "a")
    (root / "diff").rmdir()
    (root / "diff").symlink_to(elsewhere / "diff")
    for marker in ("..-removing", ".-removing", "-removing"):
        (root / "layers" / marker).write_text("")
    with pytest.raises(StoreCorruptError, match="diff: is a symlink"):
        aufs.init(root, ["aufs.engine=overlay"])
    assert (elsewhere / "diff" / "a" / "data").read_text() == "keep"
    assert (elsewhere / "precious").read_text() == "keep"
    (root / "diff").unlink()
    os.rename(elsewhere / "diff", root / "diff")
    d = aufs.init(root, ["aufs.engine=overlay"])
    try:
        assert d.ids() == ["a"]
        assert (root / "diff" / "a" / "data").read_text() == "keep"
        assert (elsewhere / "precious").read_text() == "keep"
        assert (root / "layers" / "..-removing").exists()  # reported, left alone
    finally:
        d.cleanup()


def test_removing_a_layer_stays_inside_the_store(store: aufs.Driver, outside: Path) -> None:
    store.create("a")
    store.create("b", "a")
    _chain(store, "b", b"a\n../../outside\n")
    with pytest.raises(StoreCorruptError):
        store.get("b")
    store.remove("b")
    assert sorted(os.listdir(outside)) == ["hostfile"]
    assert store.ids() == ["a"]


def test_a_damaged_child_still_protects_its_parent(store: aufs.Driver) -> None:
    from aufs.graphdriver import LayerInUseError

    store.create("a")
    store.create("b", "a")
    _chain(store, "b", b"a\n\xff\n")
    with pytest.raises(LayerInUseError):
        store.remove("a")


@pytest.mark.parametrize(("what", "body", "says"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_snapshot_reads_each_layer_file_once_and_checks_the_same(
        store: aufs.Driver, monkeypatch: pytest.MonkeyPatch, what: str, body: bytes,
        says: str) -> None:
    """``aufs ls`` looks at every layer inside ``Store.snapshot``: each ``layers/<id>`` is
    read once, and a damaged one fails as it does outside (the same message)."""
    from aufs.store import chain

    for lid, parent in (("a", ""), ("b", "a"), ("c", ""), ("other", "a"), ("top", "other")):
        store.create(lid, parent)
    _chain(store, "b", body)
    reads: list[str] = []
    real = chain.read_bytes

    def counted(path: str) -> bytes:
        reads.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(chain, "read_bytes", counted)
    with store.store.snapshot():
        for _ in range(3):
            assert [store.parents(i) for i in ("a", "c", "other", "top")] == [
                [], [], ["a"], ["other", "a"]]
            for lid in ("a", "c", "other", "top"):
                store.diff_size(lid)
            with pytest.raises(StoreCorruptError) as err:
                store.parents("b")
            assert "layers/b" in str(err.value) and says in str(err.value), str(err.value)
    good = [r for r in reads if r != "b"]
    assert sorted(good) == ["a", "c", "other", "top"]  # once each, in three rounds
    reads.clear()
    assert store.parents("top") == ["other", "a"]  # after it: the disk again
    assert sorted(reads) == ["other", "top"]


def test_a_snapshot_is_its_own_thread_s(store: aufs.Driver) -> None:
    """Another thread (the Docker plugin serves several) reads the disk meanwhile."""
    import threading

    store.create("a")
    store.create("b", "a")
    seen: list[list[str]] = []
    with store.store.snapshot():
        assert store.parents("b") == ["a"]
        _chain(store, "b", b"")  # changed on disk: this thread's snapshot keeps ["a"]
        worker = threading.Thread(target=lambda: seen.append(store.parents("b")))
        worker.start()
        worker.join()
        assert store.parents("b") == ["a"]
    assert seen == [[]]
    assert store.parents("b") == []


def test_put_releases_a_union_whose_chain_was_damaged_meanwhile(store: aufs.Driver) -> None:
    """put reads only the layer's own file (it stacks nothing): a union got before an
    ancestor's file was damaged is still released, not left mounted."""
    store.create("a")
    store.create("b", "a")
    store.create("c", "b")
    store.get("c")
    _chain(store, "b", b"nosuch\n")  # b's file now disagrees with c's chain
    with pytest.raises(StoreCorruptError):
        store.parents("c")
    store.put("c")
    assert not store.mounted("c")
    with pytest.raises(StoreCorruptError, match="disagrees"):
        store.get("c")  # and no union is stacked on it again
    assert not store.mounted("c")


def test_get_checks_every_ancestor_s_data_directory(store: aufs.Driver,
                                                    outside: Path) -> None:
    """get leaves the ancestors' layer files to parents() and checks their data
    directories instead, before every mount: missing, or a symlink out, is refused."""
    store.create("a")
    store.create("b", "a")
    store.create("c", "b")
    os.rename(store.layout.diff("a"), store.layout.diff("a") + ".gone")
    with pytest.raises(StoreCorruptError, match=r"diff/a: missing"):
        store.get("c")
    os.symlink(outside, store.layout.diff("a"))
    with pytest.raises(StoreCorruptError, match=r"diff/a"):
        store.get("c")
    assert not store.mounted("c")
    os.unlink(store.layout.diff("a"))
    os.rename(store.layout.diff("a") + ".gone", store.layout.diff("a"))
    assert store.get("c") == store.layout.mnt("c")
    store.put("c")


@pytest.mark.parametrize("shape", ["symlink", "fifo", "file"])
def test_get_of_a_base_layer_hands_out_no_symlink_out(store: aufs.Driver, outside: Path,
                                                      shape: str) -> None:
    """A layer without parents is not mounted: get hands out diff/<id> itself, so it
    must be the layer's directory — a symlink planted there would have the caller (Docker
    writing a container's files) write into the host directory it leads to."""
    store.create("a")
    diff = store.layout.diff("a")
    os.rmdir(diff)
    if shape == "symlink":
        os.symlink(outside, diff)
    elif shape == "fifo":
        os.mkfifo(diff)
    else:
        Path(diff).write_bytes(b"")
    with pytest.raises(StoreCorruptError, match=r"diff/a"):
        store.get("a")
    assert store.refcount("a") == 0
    assert sorted(os.listdir(outside)) == ["hostfile"]
