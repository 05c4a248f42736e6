"""A layer 6,000 directories deep (``mkdir d; cd d`` in a loop inside a container) works
with every command and cannot brick the store (issue 13, section 1).

It used to crash ``rm`` half-way with RecursionError, after which start-up recovery hit
the same recursion in every command; ``size`` and ``changes`` failed on paths past
PATH_MAX, ``convert`` recursed. The commands run under the usual soft limit of 1,024
fds (the CLI raises it, as Go programs do: ``diff`` holds an fd a level).
"""

from __future__ import annotations

import os
import resource
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.kit import Aufs
from tests.conftest import require_engine

DEPTH = 6000


def _deep_tree(top: str, depth: int = DEPTH) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        f = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"hello")
        os.close(f)
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def _soft_fd_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Aufs]:
    """A store on its own tmpfs (6,000 rmdirs on a busy ext4 take seconds; and pytest's
    clean-up of old tmp dirs would recurse into what a test leaves)."""
    require_engine("overlay")
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(fs)], check=True)
    try:
        cli = Aufs(fs / "store")
        cli.ok("--engine", "overlay", "create", "base")
        cli.ok("create", "deep", "--parent", "base")
        _deep_tree(str(cli.root / "diff" / "deep"))
        yield cli
        cli.ok("cleanup")
    finally:
        subprocess.run(["umount", "-R", str(fs)], check=True)


def test_every_command_on_a_deep_layer(deep: Aufs, tmp_path: Path) -> None:
    assert deep.ok("size", "deep").out.strip() == "5"
    lines = deep.ok("changes", "deep").out.splitlines()
    assert len(lines) == DEPTH + 1 and all(line.startswith("A /d") for line in lines)
    assert lines[-1].endswith("/d/f") and lines[-1].count("/d") == DEPTH
    out = tmp_path / "deep.tar"
    deep.ok("diff", "deep", "-o", str(out))
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert len(names) == DEPTH + 1 and names[-1] == "d/" * DEPTH + "f"
    mounted = deep.ok("mount", "deep").out.strip()
    deep.ok("umount", "deep")
    assert mounted.endswith("/mnt/deep")
    # the naive path (against no parent) compares mounted trees
    assert deep.ok("size", "deep", "--parent", "base").out.strip() == "5"
    deep.ok("convert", "--to", "overlay")
    deep.ok("convert", "--to", "aufs")
    assert deep.ok("size", "deep").out.strip() == "5"
    deep.ok("rm", "deep")
    assert deep.ok("ls").out.split() [0] == "base"
    assert sorted(os.listdir(deep.root / "diff")) == ["base"]


def test_a_deep_layer_half_removed_is_finished_at_start_up(deep: Aufs) -> None:
    """What a crash (or the old RecursionError) in the middle of ``rm`` leaves."""
    root = deep.root
    os.rename(root / "layers" / "deep", root / "layers" / "deep-removing")
    os.rename(root / "diff" / "deep", root / "diff" / "deep-removing")
    deep.ok("status")  # a command that opens the store for writing: recovery runs
    r = deep.ok("ls")
    assert r.out.split() == ["base", "-", "0", "B", "no", "0", "-"]
    assert sorted(os.listdir(root / "diff")) == ["base"]
    assert sorted(os.listdir(root / "layers")) == ["base"]


def test_a_leftover_that_cannot_go_does_not_stop_the_store(deep: Aufs) -> None:
    """A leftover that cannot be removed (an immutable file in it) is reported, and
    every command still works."""
    stuck = deep.root / "diff" / "gone-removing"
    stuck.mkdir()
    (stuck / "f").write_text("x")
    if subprocess.run(["chattr", "+i", str(stuck / "f")], check=False).returncode:
        pytest.skip("no immutable files on this filesystem")
    try:
        r = deep.run("status")  # opens the store for writing: recovery runs
        assert r.code == 0, r.err
        assert "gone-removing" in r.err and "warning" in r.err
        r = deep.ok("ls")
        assert [line.split()[0] for line in r.out.splitlines()] == ["base", "deep"]
        deep.ok("create", "new", "--parent", "base")
        r = deep.run("check")
        assert r.code == 1 and "removing: diff/gone-removing" in r.out
    finally:
        subprocess.run(["chattr", "-i", str(stuck / "f")], check=True)
    deep.ok("status")
    assert not stuck.exists()
    assert deep.run("check").code == 0
