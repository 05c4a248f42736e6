"""The command line does no harm: ``-o`` never replaces what is not a regular file and
never writes into the store, ``changes`` lines cannot be forged by a file name, an empty
``--root`` is refused, a hostile image archive is one clear line, and options may follow
positional arguments."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from aufs.cli.layers import quote_path
from tests.cli.kit import Aufs, docker_save_files, layer, write_tar

FORGED = "a\nD /etc/passwd"


def _layer(cli: Aufs, tmp_path: Path) -> None:
    tar = tmp_path / "l.tar"
    tar.write_bytes(layer({"etc/hostname": b"box\n"}))
    cli.ok("apply", "L", str(tar))


def _members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getnames()


# -- -o: what the path is ------------------------------------------------------------------

@pytest.mark.parametrize("command", ["diff", "export"])
def test_output_into_a_device_stays_a_device(cli: Aufs, tmp_path: Path, command: str) -> None:
    _layer(cli, tmp_path)
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    cli.ok(command, "L", "-o", str(null))
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(os.listdir(tmp_path)) == ["l.tar", "null", "store"]  # no leftovers


@pytest.mark.parametrize("command", ["diff", "export"])
def test_output_into_a_fifo_is_written_to_it(cli: Aufs, tmp_path: Path, command: str) -> None:
    _layer(cli, tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader: the writer's open returns
    chunks: list[bytes] = []
    done = threading.Event()

    def drain() -> None:  # until the command is done and the pipe is empty
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                data = b""
            if data:
                chunks.append(data)
            elif done.is_set():
                return
            else:
                time.sleep(0.005)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        cli.ok(command, "L", "-o", str(fifo))
    finally:
        done.set()
        reader.join(timeout=30)
        os.close(fd)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    expected = "etc/hostname" if command == "diff" else "index.json"
    assert expected in _members(b"".join(chunks))


def test_output_through_a_symlink_writes_its_target(cli: Aufs, tmp_path: Path) -> None:
    _layer(cli, tmp_path)
    target = tmp_path / "target.tar"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(target)
    cli.ok("diff", "L", "-o", str(link))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert "etc/hostname" in _members(target.read_bytes())


def test_regular_or_missing_output_is_replaced_whole(cli: Aufs, tmp_path: Path) -> None:
    _layer(cli, tmp_path)
    out = tmp_path / "out.tar"
    cli.ok("diff", "L", "-o", str(out))
    first = os.stat(out).st_ino
    cli.ok("diff", "L", "-o", str(out))
    assert os.stat(out).st_ino != first  # a new file renamed over the old one
    assert "etc/hostname" in _members(out.read_bytes())


@pytest.mark.parametrize("command", ["diff", "export"])
def test_output_inside_the_store_is_refused(cli: Aufs, tmp_path: Path, command: str) -> None:
    _layer(cli, tmp_path)
    diff = cli.root / "diff" / "L"
    before = sorted(os.listdir(diff))
    line = cli.fails(2, command, "L", "-o", str(diff / "x.tar"))
    assert "inside the store" in line
    outside = tmp_path / "sneaky"
    outside.symlink_to(cli.root / "layers")
    line = cli.fails(2, command, "L", "-o", str(outside / "L"))
    assert "inside the store" in line
    assert sorted(os.listdir(diff)) == before
    assert (cli.root / "layers" / "L").read_text() == ""


# -- changes lines ----------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "line"), [
    ("/etc/passwd", "/etc/passwd"),
    ("/a b/é", "/a b/é"),
    ("/back\\slash", "/back\\slash"),
    ('/"quoted"', '/"quoted"'),
    ("/" + FORGED, '"/a\\nD /etc/passwd"'),
    ("/tab\tcr\r", '"/tab\\tcr\\r"'),
    ('/nl\n"q"\\', '"/nl\\n\\"q\\"\\\\"'),
    ("/bell\x07del\x7f", '"/bell\\x07del\\x7f"'),
    ("/nel\x85ls\u2028ps\u2029", '"/nel\\u0085ls\\u2028ps\\u2029"'),
    ("/caf" + os.fsdecode(b"\xe9"), '"/caf\\xe9"'),
])
def test_quote_path(path: str, line: str) -> None:
    assert quote_path(path) == line
    assert "\n" not in quote_path(path) and len(quote_path(path).splitlines()) == 1


def test_changes_line_cannot_be_forged_by_a_name(cli: Aufs, tmp_path: Path) -> None:
    cli.ok("create", "base")
    tar = tmp_path / "l.tar"
    tar.write_bytes(layer({FORGED: b"x"}))
    cli.ok("apply", "L", str(tar), "--parent", "base")
    lines = cli.ok("changes", "L").out.splitlines()
    assert lines == ['A "/a\\nD "', 'A "/a\\nD /etc"', 'A "/a\\nD /etc/passwd"']
    assert cli.ok("changes", "L", "--json").json()[-1] == {"path": "/" + FORGED, "kind": "add"}


# -- --root, hostile image archives -----------------------------------------------------------

def test_empty_root_is_an_error(cli: Aufs, tmp_path: Path) -> None:
    env = {"AUFS_ROOT": str(tmp_path / "env-root")}  # where main used to fall back to
    r = cli.run("--root", "", "ls", env=env, root=False)
    assert r.code == 2 and len(r.err_lines) == 1 and "--root" in r.err, r.err
    assert not (tmp_path / "env-root").exists()


def test_a_root_that_is_a_file_is_one_clear_line(cli: Aufs) -> None:
    """``--root`` naming a file: the readers said ``…/mnt: Not a directory``, the
    writers ``cannot create the store root …: File exists``; now both say what it is."""
    cli.root.write_text("not a store\n")
    try:
        for args in (["ls"], ["status"], ["mount", "a"], ["create", "a"], ["diff", "a"],
                     ["changes", "a"], ["rm", "a"], ["cleanup"]):
            line = cli.fails(1, *args)
            assert line.endswith(f"the store root {cli.root} is not a directory"), (args, line)
        assert "not a layer store" in cli.fails(1, "check")
        assert cli.root.read_text() == "not a store\n"
    finally:
        cli.root.unlink()


def _archive_with(tmp_path: Path, files: dict[str, bytes],
                  links: dict[str, str] | None = None) -> Path:
    path = write_tar(files, tmp_path / "image.tar")
    if links:
        with tarfile.open(path, "a") as tf:
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
    return path


def test_import_symlink_loop_is_one_clear_line(cli: Aufs, tmp_path: Path) -> None:
    files = docker_save_files([layer({"f": b"x"})])
    del files["manifest.json"]
    archive = _archive_with(tmp_path, files, {"manifest.json": "loop", "loop": "manifest.json"})
    line = cli.fails(1, "import", str(archive))
    assert "symlink loop" in line and "internal error" not in line


def test_import_deeply_nested_json_is_one_clear_line(cli: Aufs, tmp_path: Path) -> None:
    files = docker_save_files([layer({"f": b"x"})])
    files["manifest.json"] = b"[" * 200_000 + b"]" * 200_000
    line = cli.fails(1, "import", str(write_tar(files, tmp_path / "image.tar")))
    assert "nested too deeply" in line and "internal error" not in line


# -- options after positional arguments -------------------------------------------------------

def test_options_may_follow_positional_arguments(cli: Aufs, tmp_path: Path) -> None:
    tar = tmp_path / "l.tar"
    tar.write_bytes(layer({"f": b"x"}))
    cli.ok("create", "base")
    assert cli.ok("apply", "L", "--parent", "base", str(tar)).out.strip() == "1"
    assert cli.ok("ls", "--json").json()[0]["id"] == "L"
    assert [r["parent"] for r in cli.ok("ls", "--json").json() if r["id"] == "L"] == ["base"]
    cli.ok("create", "--parent", "L", "top")
    assert cli.ok("changes", "--parent", "base", "top", "--json").json() == [
        {"path": "/f", "kind": "add"}]
    out = tmp_path / "d.tar"
    cli.ok("diff", "-o", str(out), "L", "--compress", "none")
    assert _members(out.read_bytes()) == ["f"]
    assert cli.fails(2, "apply", "L", "--parent").startswith("aufs apply:")

