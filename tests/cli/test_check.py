"""``aufs check [--repair] [--json]`` (issue 13, section 2): exit 0 clean, 1 problems found;
``--repair`` fixes what it can without losing layer data and says what it left."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.kit import Aufs
from tests.conftest import require_engine
from tests.engines.test_convert_support import build_docker_store, snapshot


@pytest.fixture(autouse=True)
def _overlay_here(request: pytest.FixtureRequest) -> None:
    """The tests that force ``--engine overlay`` skip where it cannot run."""
    if "docker_store" not in request.node.name:
        require_engine("overlay")


def _damage(cli: Aufs, outside: Path) -> None:
    """Every kind of problem the check knows that a store can hold without a mount."""
    root = cli.root
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("create", "c", "--parent", "b")
    outside.mkdir()
    (root / "layers" / "b").write_text("a\n../../outside\n")    # escapes
    (root / "layers" / "c").write_text("b\nnosuch\n")            # disagrees
    (root / "layers" / "..-removing").write_text("")            # names no layer
    (root / "layers" / "gone-removing").write_text("")          # a removal's leftover
    (root / "layers" / f"a~{2**22 + 1}").write_text("")          # unfinished write
    (root / "diff" / "orphan").mkdir()                          # layer data, no layer
    (root / "diff" / "orphan" / "data").write_text("keep me")
    (root / "mnt" / "orphan2").mkdir()
    (root / ".aufs" / "staging" / "apply-x-4194305").mkdir()    # no such pid
    (root / ".aufs" / "refs" / "c").write_text("3\n")           # held, not mounted
    (root / ".aufs" / "refs" / "nolayer").write_text("2\n")


def test_a_clean_store_checks_clean(cli: Aufs) -> None:
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    path = cli.ok("mount", "b").out.strip()
    r = cli.ok("check")
    assert "2 layers, no problems" in r.out
    assert cli.ok("check", "--json").json()["clean"] is True
    cli.ok("umount", "b")
    assert path and "2 layers, no problems" in cli.run("check").out


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts")
def test_a_store_on_a_read_only_mount_checks_and_refuses_changes_in_one_line(
        cli: Aufs) -> None:
    """A store on a read-only filesystem can be looked at: check takes its lock with a
    read-only open (flock needs no more); what would change it says why in one line."""
    from aufs._sys import libc

    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    root = str(cli.root)
    libc.mount(root, root, None, 0x1000, None)  # MS_BIND
    try:
        libc.mount("none", root, None, 0x1000 | 0x20 | 0x1, None)  # remount, bind, ro
        assert "2 layers, no problems" in cli.ok("check").out
        assert {row["id"] for row in cli.ok("--json", "ls").json()} == {"a", "b"}
        assert "read-only" in cli.fails(1, "create", "c")
    finally:
        libc.umount2(root, 0)
    assert root not in Path("/proc/self/mountinfo").read_text()


def test_check_reports_repairs_and_says_what_it_left(cli: Aufs, tmp_path: Path) -> None:
    _damage(cli, tmp_path / "outside")
    r = cli.run("check")
    assert r.code == 1 and "Traceback" not in r.err
    kinds = sorted(p["kind"] for p in cli.run("check", "--json").json()["problems"])
    assert kinds == ["bad-name", "layer-file", "layer-file", "orphan-diff", "orphan-mnt",
                     "refs", "refs", "removing", "staging", "temp"]
    assert "layers/b line 2: invalid layer id '../../outside'" in r.out
    assert "layers/..-removing: names no layer" in r.out
    # the check itself changed nothing (no start-up recovery ran)
    assert (cli.root / "layers" / "gone-removing").exists()

    r = cli.run("check", "--repair")
    assert r.code == 1, r.out  # the orphaned layer data is left
    assert "left: orphan-diff: diff/orphan" in r.out
    assert "repaired: layers/b: rewritten to agree with layers/a" in r.out
    assert (cli.root / "diff" / "orphan" / "data").read_text() == "keep me"
    assert (cli.root / "layers" / "b").read_text() == "a\n"
    assert (cli.root / "layers" / "c").read_text() == "b\na\n"
    after = cli.run("check", "--json").json()
    assert [p["kind"] for p in after["problems"]] == ["orphan-diff"]
    os.rename(cli.root / "diff" / "orphan", tmp_path / "rescued")
    assert cli.run("check").code == 0
    assert sorted(os.listdir(tmp_path / "outside")) == []
    cli.ok("mount", "c")
    cli.ok("umount", "c")


def test_refs_that_disagree_with_the_mount_table(cli: Aufs) -> None:
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("mount", "b")
    (cli.root / ".aufs" / "refs" / "b").write_text("0\n")
    r = cli.run("check")
    assert r.code == 1 and "no references, but mnt/b is mounted" in r.out
    r = cli.run("check", "--repair")
    assert r.code == 0 and "refs/b: set to 1" in r.out
    cli.ok("umount", "b")
    assert not os.path.ismount(cli.root / "mnt" / "b")


def test_a_damaged_layer_is_listed_and_can_be_removed(cli: Aufs) -> None:
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    (cli.root / "layers" / "b").write_bytes(b"a\n\xff\xfe\n")
    r = cli.run("ls", "--json")
    assert r.code == 0 and "layers/b line 2: not UTF-8" in r.err
    rows = {row["id"]: row for row in r.json()}
    assert "not UTF-8" in rows["b"]["damaged"] and "damaged" not in rows["a"]
    line = cli.fails(1, "mount", "b")
    assert line.startswith("aufs: ") and "layers/b line 2: not UTF-8" in line
    cli.ok("mount", "a")  # the other layer works
    cli.ok("umount", "a")
    cli.ok("rm", "b")
    assert cli.ok("check").code == 0


def test_check_of_something_that_is_no_store(cli: Aufs, tmp_path: Path) -> None:
    line = cli.fails(1, "--root", str(tmp_path / "nothing"), "check")
    assert "is not a layer store" in line


@pytest.mark.parametrize("opened", [False, True], ids=["as-docker-left-it", "after-init"])
def test_a_docker_store_checks_clean_without_a_byte_changing(
        cli: Aufs, tmp_path: Path, opened: bool) -> None:
    root = tmp_path / "docker" / "aufs"
    build_docker_store(root)
    docker = Aufs(root)
    if opened:
        require_engine("fuse-overlayfs")  # what opens an AUFS-format store here
        docker.ok("ls")
    before = {top: snapshot(root / top) for top in ("layers", "diff", "mnt")}
    r = docker.run("check")
    assert r.code == 0, r.out
    assert "4 layers, no problems" in r.out
    assert os.path.isdir(root / ".aufs") == opened  # a plain check writes nothing
    assert docker.run("check", "--repair").code == 0
    assert before == {top: snapshot(root / top) for top in ("layers", "diff", "mnt")}
    if opened:
        docker.ok("cleanup")


def test_a_diff_symlink_out_of_the_store_is_refused_and_removable(cli: Aufs,
                                                                  tmp_path: Path) -> None:
    """``diff/<id>`` swapped for a symlink to a host directory: never stacked, read or
    written through; check names it; ``rm`` drops the link and nothing behind it."""
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    os.rmdir(cli.root / "diff" / "b")
    os.symlink(outside, cli.root / "diff" / "b")
    r = cli.run("check", "--json")
    assert r.code == 1 and [p["kind"] for p in r.json()["problems"]] == ["bad-diff"]
    for args in (["mount", "b"], ["diff", "b"], ["changes", "b"], ["size", "b"]):
        line = cli.fails(1, *args)
        assert "not where a migration leaves a layer" in line, args
    cli.ok("rm", "b")
    assert sorted(os.listdir(outside)) == ["passwd"]
    assert cli.run("check").code == 0


def _tree(path: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(path)), p.lstat().st_mode, p.lstat().st_size)
                  for p in path.rglob("*"))


@pytest.mark.parametrize("store_dir", ["mnt", "diff", "layers", ".aufs"])
def test_a_store_directory_that_is_a_symlink_is_refused(cli: Aufs, tmp_path: Path,
                                                        store_dir: str) -> None:
    """``mnt/`` (or ``diff/``, ``layers/``, ``.aufs/``) swapped for a symlink to a host
    directory: every command refuses the store with one line naming it, nothing is made,
    mounted or removed there, and check reports it (its repair touches nothing). Those
    inside ``.aufs/``: tests/safety/test_store_own_dirs.py."""
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("cleanup")
    outside = tmp_path / "host"
    os.rename(cli.root / store_dir, outside)
    (outside / "hostfile").write_text("secret\n")
    os.symlink(outside, cli.root / store_dir)
    before = _tree(outside)
    mounts = Path("/proc/self/mountinfo").read_text().count(str(tmp_path))
    try:
        for args in (["mount", "b"], ["create", "c", "--parent", "b"], ["rm", "b"],
                     ["ls"], ["changes", "b"], ["size", "b"], ["status"], ["cleanup"]):
            line = cli.fails(1, *args)
            assert f"{store_dir}: is a symlink, not a directory of the store" in line, args
        for args in (["check", "--json"], ["check", "--repair", "--json"]):
            r = cli.run(*args)
            assert r.code == 1 and not r.err, (args, r.err)
            assert [p["kind"] for p in r.json()["problems"]] == ["store-dir"], args
        assert _tree(outside) == before
        assert Path("/proc/self/mountinfo").read_text().count(str(tmp_path)) == mounts
    finally:
        os.unlink(cli.root / store_dir)
        os.rename(outside, cli.root / store_dir)
    cli.ok("mount", "b")
    cli.ok("umount", "b")


def test_convert_refuses_a_damaged_layer_before_touching_the_store(cli: Aufs,
                                                                  tmp_path: Path) -> None:
    """``diff/<id>`` a symlink out of the store stopped ``convert`` half-way, its journal
    written: every command then refused the store and ``convert`` failed again on the
    same layer. Now it refuses first; the other layers keep working, and once the damaged
    layer is removed the conversion goes through."""
    outside = tmp_path / "host"
    outside.mkdir()
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("create", "z")
    os.rmdir(cli.root / "diff" / "z")
    os.symlink(outside, cli.root / "diff" / "z")
    line = cli.fails(1, "convert", "--to", "aufs")
    assert "diff/z: a symlink to" in line
    assert not (cli.root / ".aufs" / "convert.json").exists()
    cli.ok("mount", "b")
    cli.ok("umount", "b")
    cli.ok("rm", "z")
    cli.ok("convert", "--to", "aufs")
    assert os.listdir(outside) == []


@pytest.mark.parametrize("planted", ["symlink", "directory", "fifo"])
def test_a_count_file_that_is_no_regular_file_is_reported_and_repaired(
        cli: Aufs, tmp_path: Path, planted: str) -> None:
    """``.aufs/refs/<id>`` a symlink to a host file, a directory or a FIFO: ``check``
    stopped at it with an error instead of reporting it, and ``--repair`` could not get
    past it. Now it is a ``refs`` problem; the repair drops it (never its target) and
    the layer mounts again."""
    host = tmp_path / "hostfile"
    host.write_text("secret\n")
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    count = cli.root / ".aufs" / "refs" / "b"
    with contextlib.suppress(FileNotFoundError):
        count.unlink()
    if planted == "symlink":
        count.symlink_to(host)
    elif planted == "directory":
        count.mkdir()
    else:
        os.mkfifo(count)
    r = cli.run("check", "--json")
    assert r.code == 1 and not r.err, r.err
    assert [(p["kind"], p["layer"]) for p in r.json()["problems"]] == [("refs", "b")]
    r = cli.run("check", "--repair")
    assert r.code == 0 and not r.err, (r.out, r.err)
    assert host.read_text() == "secret\n"
    assert cli.run("check").code == 0
    cli.ok("mount", "b")
    cli.ok("umount", "b")


def test_a_read_only_store_is_checked(cli: Aufs) -> None:
    """A store on a read-only mount: ``check`` failed on the lock file
    (``/proc/self/fd/3: Read-only file system``); now it checks the store as it is,
    ``--repair`` says why it cannot, and no error names a /proc path."""
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("cleanup")
    root = str(cli.root)
    subprocess.run(["mount", "--bind", root, root], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", root, root], check=True)
        r = cli.run("check")
        assert r.code == 0 and not r.err and "no problems" in r.out, (r.out, r.err)
        assert "read-only" in cli.fails(1, "check", "--repair")
        line = cli.fails(1, "convert", "--to", "aufs")
        assert "/proc/" not in line and "read-only" in line.lower(), line
        cli.ok("ls")
    finally:
        subprocess.run(["umount", root], check=True)


@pytest.mark.parametrize("cycle", [{"a": "c\nb\n"}, {"b": "c\n", "c": "b\n"}])
def test_layers_of_a_cycle_can_be_removed(cli: Aufs, cycle: dict[str, str]) -> None:
    """A chain turned into a cycle (``a`` lists ``c``, which stands on ``b`` and ``a``):
    every layer of it was the parent of another, so ``rm`` refused each one and
    ``--repair`` could not say which chain was right — nothing could ever be removed.
    A child that the layer's own file names as its ancestor no longer protects it; a
    layer outside the cycle still does."""
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("create", "c", "--parent", "b")
    cli.ok("create", "other", "--parent", "c")
    for name, body in cycle.items():  # by rename, as an editor saves
        (cli.root / "layers" / f"{name}.new").write_text(body)
        os.replace(cli.root / "layers" / f"{name}.new", cli.root / "layers" / name)
    assert cli.run("check").code == 1
    assert "is the parent of: other" in cli.fails(1, "rm", "c")
    cli.ok("rm", "other")
    for name in ("c", "b", "a"):
        cli.ok("rm", name)
    assert cli.ok("ls").out == ""
    assert cli.run("check").code == 0


def test_a_store_root_reached_through_a_symlink_works(cli: Aufs, tmp_path: Path) -> None:
    """The README's promise beside the store-dir refusal: the root itself may be a
    symlink (resolved once); only the directories inside it may not."""
    cli.ok("--engine", "overlay", "create", "a")
    cli.ok("create", "b", "--parent", "a")
    cli.ok("cleanup")
    link = tmp_path / "via-link"
    link.symlink_to(cli.root)
    through = Aufs(link)
    path = through.ok("mount", "b").out.strip()
    assert path == str(cli.root / "mnt" / "b")
    through.ok("umount", "b")
    assert "2 layers, no problems" in through.ok("check").out
    through.ok("cleanup")
