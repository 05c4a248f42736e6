"""Every CLI command in a subprocess: success paths, JSON output, user errors."""

from __future__ import annotations

import gzip
import io
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path

import zstandard

from aufs._sys import mountinfo
from tests.cli.kit import REPO, Aufs, layer


def _mounted(path: str) -> bool:
    return any(e.mountpoint == path for e in mountinfo.read())


def _names(tar_bytes: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return sorted(m.name for m in tar.getmembers())


def _two_layers(cli: Aufs) -> str:
    cli.ok("create", "base")
    cli.ok("create", "top", "--parent", "base")
    return cli.ok("mount", "top").out


def test_status_text_and_json(cli: Aufs) -> None:
    text = cli.ok("status").out
    assert text.splitlines()[0].startswith("Root Dir:")
    assert str(cli.root) in text
    data = cli.ok("--json", "status").json()
    assert data["Root Dir"] == os.path.realpath(cli.root)
    assert data["Dirs"] == "0"
    assert {"Backing Filesystem", "Dirperm1 Supported", "Engine",
            "Whiteout Format"} <= data.keys()
    assert cli.ok("status", "--json").json() == data  # --json also after the command


def test_create_ls_tree(cli: Aufs) -> None:
    cli.ok("create", "base")
    cli.ok("create", "mid", "--parent", "base")
    cli.ok("create", "top", "--parent", "mid")
    cli.ok("create", "other", "--parent", "base")
    lines = cli.ok("ls").out.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["base", "mid", "other", "top"]
    rows = {r["id"]: r for r in cli.ok("ls", "--json").json()}
    assert rows["top"]["parent"] == "mid" and rows["base"]["parent"] is None
    assert rows["top"]["mounted"] is False and rows["top"]["refs"] == 0
    assert rows["base"]["size"] == 0 and rows["base"]["names"] == []
    tree = cli.ok("tree").out
    assert tree.splitlines()[0].startswith("base")
    assert "├── mid" in tree or "└── mid" in tree
    assert "    └── top" in tree or "│   └── top" in tree
    (root,) = cli.ok("tree", "--json").json()
    assert root["id"] == "base"
    kids = {k["id"]: k for k in root["children"]}
    assert kids.keys() == {"mid", "other"}
    assert [k["id"] for k in kids["mid"]["children"]] == ["top"]


def test_mount_changes_size_diff_umount(cli: Aufs) -> None:
    path = _two_layers(cli)
    assert path.endswith("\n") and path.count("\n") == 1
    mnt = path.strip()
    assert mnt == os.path.realpath(cli.root / "mnt" / "top") and _mounted(mnt)
    Path(mnt, "hello").write_text("hello\n")
    os.mkdir(Path(mnt, "dir"))
    Path(mnt, "dir", "f").write_bytes(b"x" * 1000)
    assert cli.ok("changes", "top").out.splitlines() == ["A /dir", "A /dir/f", "A /hello"]
    assert cli.ok("changes", "top", "--json").json() == [
        {"path": "/dir", "kind": "add"}, {"path": "/dir/f", "kind": "add"},
        {"path": "/hello", "kind": "add"}]
    assert cli.ok("size", "top").out == "1006\n"
    assert cli.ok("size", "top", "--json").json() == {"id": "top", "size": 1006}
    tree = cli.ok("tree").out
    assert "top  1006 B  mounted (1 holder)" in tree
    row = next(r for r in cli.ok("ls", "--json").json() if r["id"] == "top")
    assert row["mounted"] is True and row["refs"] == 1 and row["size"] == 1006

    out = cli.root.parent / "top.tar"
    assert cli.ok("diff", "top", "-o", str(out)).out == ""
    assert _names(out.read_bytes()) == ["dir", "dir/f", "hello"]
    plain = cli.ok("diff", "top").raw
    assert _names(plain) == ["dir", "dir/f", "hello"]
    gz = cli.ok("diff", "top", "--compress", "gzip").raw
    assert _names(gzip.decompress(gz)) == ["dir", "dir/f", "hello"]
    zst = cli.ok("diff", "top", "--compress", "zstd").raw
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst)).read()
    assert _names(data) == ["dir", "dir/f", "hello"]

    # A second holder: the first umount keeps it mounted, the second unmounts.
    assert cli.ok("mount", "top").out.strip() == mnt
    cli.ok("umount", "top")
    assert _mounted(mnt)
    cli.ok("umount", "top")
    assert not _mounted(mnt)


def test_mount_survives_the_process_and_umount_in_another(cli: Aufs) -> None:
    mnt = _two_layers(cli).strip()
    # Each command is its own process: the union stays after `mount` exits...
    assert _mounted(mnt)
    assert cli.ok("ls", "--json").json()[1]["mounted"] is True
    # ...and `umount` in another process unmounts it (the count is on disk).
    cli.ok("umount", "top")
    assert not _mounted(mnt)
    assert not any(e.mountpoint.startswith(str(cli.root)) for e in mountinfo.read())


def test_apply_from_file_and_stdin(cli: Aufs, tmp_path: Path) -> None:
    tar = layer({"etc/a": b"aaa", "etc/b": b"bb"})
    f = tmp_path / "l.tar.gz"
    f.write_bytes(gzip.compress(tar))
    assert cli.ok("apply", "base", str(f)).out == "5\n"  # created, then applied
    assert cli.ok("apply", "child", "-", "--parent", "base",
                  stdin=layer({"etc/c": b"c"}, deletions=("etc/a",))).out == "1\n"
    assert cli.ok("changes", "child").out.splitlines() == ["C /etc", "D /etc/a", "A /etc/c"]
    assert cli.ok("apply", "child", stdin=layer({"x": b"12"})).out == "3\n"
    assert cli.ok("changes", "child").out.splitlines() == [
        "C /etc", "D /etc/a", "A /etc/c", "A /x"]


def test_apply_failure_leaves_no_new_layer(cli: Aufs, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(layer({"a": b"x" * 5000})[:3000])  # truncated
    line = cli.fails(1, "apply", "new", str(bad))
    assert line.startswith("aufs: ")
    assert cli.ok("ls").out == ""
    assert "gone.tar" in cli.fails(1, "apply", "new", str(tmp_path / "gone.tar"))
    assert cli.ok("ls").out == ""


def test_rm(cli: Aufs) -> None:
    _two_layers(cli)
    assert "parent of: top" in cli.fails(1, "rm", "base")
    cli.ok("rm", "top")  # unmounts too
    cli.ok("rm", "base")
    assert cli.ok("ls").out == ""
    assert cli.ok("--json", "ls").json() == []


def test_cleanup_unmounts_everything(cli: Aufs) -> None:
    mnt = _two_layers(cli).strip()
    cli.ok("create", "t2", "--parent", "top")
    mnt2 = cli.ok("mount", "t2").out.strip()
    assert _mounted(mnt) and _mounted(mnt2)
    cli.ok("cleanup")
    assert not any(e.mountpoint.startswith(str(cli.root)) for e in mountinfo.read())
    assert cli.ok("size", "t2").out == "0\n"  # the store stays usable


def test_migrate(cli: Aufs, tmp_path: Path) -> None:
    empty = tmp_path / "old-docker"
    empty.mkdir()
    cli.ok("migrate", str(empty))  # no graph/: nothing to do
    assert cli.ok("ls").out == ""
    line = cli.fails(1, "migrate", str(tmp_path / "nope"))
    assert "nope" in line


def test_convert_to_the_current_format(cli: Aufs) -> None:
    fmt = cli.ok("--json", "status").json()["Whiteout Format"]
    cli.ok("create", "base")
    out = cli.ok("convert", "--to", fmt).out
    assert fmt in out and "1 of 1 layers" in out
    cli.ok("create", "top", "--parent", "base")  # still a working store


def test_aufs_root_from_the_environment(cli: Aufs) -> None:
    r = cli.run("create", "viaenv", root=False, env={"AUFS_ROOT": str(cli.root)})
    assert r.code == 0, r.err
    assert cli.ok("ls").out.split()[0] == "viaenv"


def test_user_errors_are_one_line(cli: Aufs, tmp_path: Path) -> None:
    cli.ok("create", "base")
    assert cli.fails(1, "mount", "nope") == "aufs: no such layer: nope"
    for cmd in ("umount", "rm", "changes", "size", "diff"):
        assert "no such layer: nope" in cli.fails(1, cmd, "nope")
    assert "invalid layer id" in cli.fails(2, "create", "a/b")
    assert "invalid layer id" in cli.fails(2, "mount", "../x")
    assert "already exists" in cli.fails(1, "create", "base")
    assert "no such layer: ghost" in cli.fails(1, "create", "x", "--parent", "ghost")
    assert "--bogus" in cli.fails(2, "ls", "--bogus")
    assert "invalid choice" in cli.fails(2, "frobnicate")
    assert "invalid choice" in cli.fails(2, "--engine", "zfs", "ls")
    assert "invalid choice" in cli.fails(2, "diff", "base", "--compress", "lz4")
    assert "required" in cli.fails(2, "mount")
    assert "required" in cli.fails(2, "convert")
    assert "missing.tar" in cli.fails(1, "apply", "base", str(tmp_path / "missing.tar"))
    assert "missing.tar" in cli.fails(1, "import", str(tmp_path / "missing.tar"))
    if "aufs" not in Path("/proc/filesystems").read_text().split():
        fresh = Aufs(tmp_path / "fresh")
        line = fresh.fails(1, "--engine", "aufs", "status")
        assert line == "aufs: AUFS was not found in /proc/filesystems"
        # also on a store in use, whatever whiteouts it keeps
        assert cli.fails(1, "--engine", "aufs", "status") == line
    assert cli.ok("ls").out.split()[0] == "base"  # nothing was changed by the errors


def test_help_and_version(cli: Aufs) -> None:
    r = cli.run("--help")
    assert r.code == 0 and "import" in r.out and "export" in r.out
    r = cli.run("--version")
    assert r.code == 0 and r.out.startswith("aufs ")


def test_diff_refuses_a_terminal(cli: Aufs) -> None:
    cli.ok("create", "base")
    master, slave = pty.openpty()
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        p = subprocess.run([sys.executable, "-m", "aufs", "--root", str(cli.root),
                            "diff", "base"], stdout=slave, stderr=subprocess.PIPE,
                           timeout=60, check=False, env=env)
    finally:
        os.close(slave)
        os.close(master)
    err = p.stderr.decode().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "terminal" in err[0]


def test_debug_shows_the_traceback(cli: Aufs) -> None:
    r = cli.run("--debug", "mount", "nope")
    assert r.code == 1 and "Traceback" in r.err and "LayerNotFoundError" in r.err
