"""The one directory walker (:mod:`aufs._sys.deep`): its contract, and that every walk
built on it keeps it — no symlink followed, no mount crossed, a 6,000-deep chain and a
directory of hundreds of subdirectories walked under a small fd limit, a tar's order."""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aufs._sys import deep, safefs
from aufs.archive import ChangeKind, _writer, tarsplit
from aufs.archive.export import export_dir
from aufs.archive.treediff import changes_dirs
from aufs.union import fuse_tidy
from tests.cli.test_deep_layer import _deep_tree

DEPTH = 6000
FDS = 48  # the soft fd limit the walks run under: far below the depth, or the width


@pytest.fixture(scope="module")
def deep_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 6,000-deep chain on its own tmpfs (ext4 takes seconds to remove it, and pytest's
    clean-up of old tmp dirs would recurse into it), unmounted after the module."""
    fs = tmp_path_factory.mktemp("deep")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(fs)], check=True)
    try:
        _deep_tree(str(fs), DEPTH)
        yield fs
    finally:
        subprocess.run(["umount", str(fs)], check=True)


@pytest.fixture
def few_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tree(top: Path) -> None:
    for d in ("a/b/c", "a/e", "h/i", ".wh..wh.plnk/x"):
        (top / d).mkdir(parents=True)
    for f in ("a/f", "a/b/g", "a/zz", "z", "h/i/j", ".wh..wh.plnk/x/y"):
        (top / f).write_bytes(b"x")
    (top / "a" / "link").symlink_to(top / "h")  # a symlink to a directory: never entered
    (top / "out").symlink_to("/")


def test_walk_dirs_visits_each_directory_once_never_through_a_symlink(tmp_path: Path) -> None:
    _tree(tmp_path)
    seen = {rel: sorted(e.name for e in entries)
            for _, rel, entries in deep.walk_dirs(str(tmp_path))}
    assert sorted(seen) == ["", ".wh..wh.plnk", ".wh..wh.plnk/x", "a", "a/b", "a/b/c", "a/e",
                            "h", "h/i"]
    assert seen["a"] == ["b", "e", "f", "link", "zz"]  # the symlink is an entry, not a dir
    skipped = [rel for _, rel, _ in deep.walk_dirs(
        str(tmp_path), lambda e: not e.name.startswith(".wh."))]
    assert ".wh..wh.plnk" not in skipped and "a/b/c" in skipped


def test_walk_dirs_stays_on_its_filesystem(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "k").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "m")], check=True)
    try:
        (tmp_path / "m" / "inside").mkdir()
        rels = [rel for _, rel, _ in deep.walk_dirs(str(tmp_path))]
        with pytest.raises(tarsplit.Unusable, match="mounted"):
            tarsplit.fingerprint(str(tmp_path))
    finally:
        subprocess.run(["umount", str(tmp_path / "m")], check=True)
    assert rels == ["", "k"]  # the mount point is an entry, its filesystem no part


def test_walk_dirs_skips_what_the_caller_removed(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    rels = []
    for fd, rel, _ in deep.walk_dirs(str(tmp_path)):
        rels.append(rel)
        if rel == "":
            safefs.remove_at(fd, "a")
    assert rels == ["", "c"]


def test_dir_stack_gives_a_tars_order(tmp_path: Path) -> None:
    """Each subtree right after its directory's entry, entries in the caller's order."""
    _tree(tmp_path)
    root = os.open(tmp_path, safefs.O_DIR)

    def listed(fd: int) -> list[str]:
        return sorted(os.listdir(fd))

    order = []
    walk: deep.DirStack[str, str] = deep.DirStack(root, "", listed(root))
    try:
        for fd, rel, names in walk:
            for name in names:
                order.append(rel + name)
                sub = deep.open_subdir(fd, name, os.fstat(root).st_dev)
                if sub is not None:
                    walk.push(sub, f"{rel}{name}/", listed(sub))
                    break
    finally:
        walk.close()
        os.close(root)
    assert order == [".wh..wh.plnk", ".wh..wh.plnk/x", ".wh..wh.plnk/x/y", "a", "a/b",
                     "a/b/c", "a/b/g", "a/e", "a/f", "a/link", "a/zz", "h", "h/i", "h/i/j",
                     "out", "z"]


def test_walks_of_a_6000_deep_chain_hold_few_fds(deep_tree: Path, few_fds: None) -> None:
    """export (the tar), the tar-split fingerprint and walk_dirs: no RecursionError, no
    EMFILE (export held an fd a level; the fingerprint recursed), nothing left open."""
    before = _open_fds()
    size = 0
    with export_dir(str(deep_tree)) as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
    assert size > DEPTH * 512
    assert tarsplit.fingerprint(str(deep_tree)).startswith("sha256:")
    assert sum(1 for _ in deep.walk_dirs(str(deep_tree))) == DEPTH + 1
    assert _open_fds() == before


def test_a_wide_directory_under_a_small_fd_limit(tmp_path: Path, few_fds: None) -> None:
    """fuse-overlayfs's tidy walked with an fd for every pending sibling: EMFILE."""
    for i in range(4 * FDS):
        (tmp_path / f"d{i}" / "e").mkdir(parents=True)
    before = _open_fds()
    assert fuse_tidy.tidy(str(tmp_path), []) == (0, 0)
    assert sum(1 for _ in deep.walk_dirs(str(tmp_path))) == 8 * FDS + 1
    assert _open_fds() == before


def _long_chain(top: Path, capability: bool) -> str:
    """A chain whose path passes PATH_MAX (4,096), a file ``g`` at its end; returns
    the path of ``g`` below ``top``."""
    name = "d" * 200
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(21):
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.close(os.open("g", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.utime("g", ns=(10**18, 10**18), dir_fd=fd)
        if capability:
            os.setxattr(safefs.proc_path(fd, "g"), "security.capability",
                        bytes.fromhex("0100000200040000000000000000000000000000"))
    finally:
        os.close(fd)
    return f"/{name}" * 21 + "/g"


def test_naive_changes_read_xattrs_past_the_path_limit(tmp_path: Path, few_fds: None) -> None:
    """changes_dirs walks by fd; the capability of a file past PATH_MAX is still read."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    g = _long_chain(tmp_path / "old", capability=False)
    assert _long_chain(tmp_path / "new", capability=True) == g and len(g) > 4096
    before = _open_fds()
    changes = changes_dirs(str(tmp_path / "new"), str(tmp_path / "old"))
    assert [(c.path, c.kind) for c in changes][-1] == (g, ChangeKind.MODIFY)
    assert len(changes) == 22 and _open_fds() == before
    assert changes_dirs(str(tmp_path / "new"), str(tmp_path / "new")) == []


def test_the_writer_scripts_copy_of_the_open_flags_is_the_one_definition() -> None:
    """The extraction's writer runs as a script importing nothing of aufs."""
    assert (_writer._O_NEW, _writer._O_DIR) == (safefs.O_NEW, safefs.O_DIR)
