"""An existing Docker aufs store (``/var/lib/docker/aufs``) opened on a kernel without AUFS:
it opens as it is (AUFS whiteouts, read by fuse-overlayfs), mounts correctly, and not one
byte or attribute of ``layers/``, ``diff/`` or ``mnt/`` changes until the user asks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aufs
from aufs.graphdriver import NotSupportedError
from tests.conftest import engine_skip_reason, require_engine
from tests.engines.test_convert_support import (
    BASE,
    CTR,
    HOUSEKEEPING,
    IMAGE,
    INIT,
    build_docker_store,
    snapshot,
    store_listing,
    tar_listing,
    union_tree,
)

pytestmark = pytest.mark.skipif(engine_skip_reason("aufs") is None,
                                reason="the kernel has AUFS: auto would pick it")


def docker_parts(root: Path) -> dict[str, dict[str, tuple[object, ...]]]:
    return {top: snapshot(root / top) for top in ("layers", "diff", "mnt")}


def test_a_docker_store_opens_mounts_and_diffs_without_a_byte_changing(tmp_path: Path) -> None:
    require_engine("fuse-overlayfs")
    root = tmp_path / "docker" / "aufs"
    build_docker_store(root)
    before = docker_parts(root)
    expected = store_listing(root)  # computed from the directories alone, before init

    d = aufs.init(root)  # engine=auto
    try:
        assert d.engine.name == "fuse-overlayfs"
        assert d.whiteouts.name == "aufs"
        status = dict(d.status())
        assert status["Whiteout Format"] == "aufs" and status["Dirs"] == "4"
        assert sorted(d.ids()) == sorted([BASE, IMAGE, INIT, CTR])
        assert d.parents(CTR) == [INIT, IMAGE, BASE]

        for layer in d.ids():
            assert [str(c) for c in d.changes(layer)] == expected[layer][0]
            assert d.diff_size(layer) == expected[layer][2]
            rows = tar_listing(d.diff(layer))
            assert rows == expected[layer][1]
            names = [str(r[1] if r[0] == "whiteout" else r[0]) for r in rows]
            assert not any(".wh..wh." in n and not n.endswith(".wh..wh..opq") for n in names)
        # The naive diff (against a grandparent) mounts both unions.
        naive = [str(c) for c in d.changes(CTR, BASE)]
        assert "D /bin" in naive and "D /var" in naive and "A /.dockerinit" in naive

        ctr = union_tree(d.get(CTR))
        image = union_tree(d.get(IMAGE))
        init = union_tree(d.get(INIT))
        try:
            for tree in (ctr, image, init):
                assert not any(os.path.basename(p).startswith(".wh.") for p in tree), tree
            # whiteouts hide, opaque dirs replace, the rest shows through
            assert "etc/shadow" not in image and "var" not in image
            assert "usr/share/doc/pkg" not in image
            assert "usr/share/doc/only-this" in image and "usr/lib/libc.so.6" in image
            assert "etc/shadow" not in ctr and "etc/motd" not in ctr and "bin" not in ctr
            assert "opt/app/run" not in ctr and "opt/app/log" in ctr
            assert "etc/hosts" in ctr and ".dockerinit" in ctr and "tmp/link" in ctr
            assert "bin/sh" in init and "etc/motd" in init
            assert Path(d.layout.mnt(IMAGE), "etc", "motd").read_text() == (
                "hello from the image\n")
            assert Path(d.layout.mnt(CTR), "etc", "passwd").read_text().endswith("bash\n")
        finally:
            for layer in (CTR, IMAGE, INIT):
                d.put(layer)
        assert not any(d.mounted(i) for i in (CTR, IMAGE, INIT))
        # A second driver on the same store, in a row, changes nothing either.
        aufs.init(root).close()
    finally:
        d.cleanup()

    assert docker_parts(root) == before
    # cleanup leaves Docker's directory as it found it: our .aufs/ (lock, reference
    # counts, work dirs) is gone again, and no store.json was ever written
    assert sorted(os.listdir(root)) == ["diff", "layers", "mnt"]
    for name in HOUSEKEEPING:
        assert (root / "diff" / CTR / name).exists()


def test_the_kernel_overlay_engine_is_refused_until_the_store_is_converted(
        tmp_path: Path) -> None:
    require_engine("overlay")
    root = tmp_path / "aufs"
    build_docker_store(root)
    before = docker_parts(root)
    with pytest.raises(NotSupportedError, match="aufs convert --to overlay"):
        aufs.init(root, ["aufs.engine=overlay"])
    assert docker_parts(root) == before


def test_snapshot_sees_a_rewrite(tmp_path: Path) -> None:
    """The comparison above could not pass by accident: a whiteout replaced by an
    identical one (new inode, new ctime) is seen."""
    root = tmp_path / "aufs"
    build_docker_store(root)
    before = docker_parts(root)
    wh = root / "diff" / CTR / "etc" / ".wh.motd"
    data = wh.read_bytes()
    st = wh.stat()
    wh.unlink()
    wh.write_bytes(data)
    os.chmod(wh, st.st_mode)
    os.utime(wh, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(wh.parent, ns=(st.st_atime_ns, os.stat(wh.parent).st_mtime_ns))
    assert docker_parts(root) != before


def test_cleanup_keeps_what_the_user_stored_in_a_docker_store(tmp_path: Path) -> None:
    """Only what any open makes and drops goes: a name given to a layer stays."""
    require_engine("fuse-overlayfs")
    root = tmp_path / "aufs"
    build_docker_store(root)
    d = aufs.init(root)
    try:
        d.get(CTR)
        d.put(CTR)
        assert (root / ".aufs" / "refs" / CTR).exists()  # kept at zero by put
    finally:
        d.cleanup()
    assert sorted(os.listdir(root)) == ["diff", "layers", "mnt"]
    d = aufs.init(root)
    try:
        Path(d.layout.names_file).write_text("{}\n")  # as `aufs tag` would
    finally:
        d.cleanup()
    assert sorted(os.listdir(root / ".aufs")) == ["l", "lock", "names.json", "refs",
                                                  "staging", "work"]


def test_the_cli_cleanup_leaves_a_docker_store_as_it_found_it(tmp_path: Path) -> None:
    """``aufs cleanup`` (a process of its own, which closes the store on exit) after
    read-only commands and a mount: no ``.aufs/`` left, Docker's files unchanged."""
    from tests.cli.kit import Aufs

    require_engine("fuse-overlayfs")
    root = tmp_path / "aufs"
    build_docker_store(root)
    before = docker_parts(root)
    cli = Aufs(root)
    cli.ok("changes", CTR)
    cli.ok("ls")
    assert (root / ".aufs").is_dir()  # what opening a store makes: see the README
    cli.ok("mount", IMAGE)
    cli.ok("cleanup")
    assert sorted(os.listdir(root)) == ["diff", "layers", "mnt"]
    assert docker_parts(root) == before
