"""Docker's pkg/archive rules (v20.10.24) on every path that extracts a layer tar: the
driver's apply_diff (each engine), NaiveDiffDriver's apply into a live tree, and
``aufs import`` — symlink targets that climb out of the layer, PAX global and extended
headers as Go's archive/tar reads them, union-private xattrs, an opaque layer root, and
applying into a layer that a mounted union stacks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

import aufs
from aufs.archive import BreakoutError, ChangeKind
from aufs.errors import LayerMountedError
from aufs.graphdriver import NaiveDiffDriver
from aufs.whiteout import WH_OPAQUE
from tests.cli.kit import REPO, Aufs, docker_save_files, write_tar
from tests.safety.snapshot import snapshot
from tests.unit.test_apply_tarread import END, extended, member, pax_record
from tests.unit.test_changes_naive import VfsDriver

REG, DIR, SYM = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE


def tar_of(*entries: tuple[str, bytes, str | bytes], xattrs: dict[str, dict[str, str]]
           | None = None) -> bytes:
    """(name, type, link target or data) members; ``xattrs``: name -> SCHILY xattrs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == DIR else 0o644
            info.pax_headers = {f"SCHILY.xattr.{k}": v
                                for k, v in (xattrs or {}).get(name, {}).items()}
            if kind == SYM:
                assert isinstance(extra, str)
                info.linkname = extra
                tf.addfile(info)
            else:
                data = extra.encode() if isinstance(extra, str) else extra
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- symlink targets ----------------------------------------------------------------------

# (link name, target): Docker's createTarFile refuses each (filepath.Join(dir, target)
# leaves the layer).
ESCAPES = [
    ("l", ".."),
    ("l", "../victim"),
    ("a/l", "../../etc"),
    ("a/b/l", "../x/../../../y"),
    ("l", "/../victim/hello"),  # absolute, joined as Go's Join does: climbs out
]
# Stays inside: content.
INSIDE = [
    ("a/l", "../etc"),
    ("a/b/l", "../../x"),
    ("abs", "/etc/passwd"),
    ("b/l", "/../etc"),  # joined: b/../etc
    ("dot", "./x/../y"),
    ("dots", "no..dots..here"),
]


def test_symlink_climbing_out_is_a_breakout_and_changes_nothing(driver: aufs.Driver,
                                                                tmp_path: Path) -> None:
    driver.create("L")
    layer = driver.layout.diff("L")
    Path(layer, "keep").write_text("keep")
    before = snapshot(layer)
    for name, target in ESCAPES:
        data = tar_of(("first", REG, "x"), (name, SYM, target))
        with pytest.raises(BreakoutError, match="points outside the layer"):
            driver.apply_diff("L", "", io.BytesIO(data))
        assert snapshot(layer) == before, name
    driver.apply_diff("L", "", io.BytesIO(tar_of(*((n, SYM, t) for n, t in INSIDE))))
    for name, target in INSIDE:
        assert os.readlink(f"{layer}/{name}") == target  # stored as it is


def test_naive_apply_refuses_a_climbing_symlink(tmp_path: Path) -> None:
    vfs = VfsDriver(tmp_path / "vfs")
    naive = NaiveDiffDriver(vfs)
    naive.create("L")
    for name, target in ESCAPES:
        with pytest.raises(BreakoutError):
            naive.apply_diff("L", "", io.BytesIO(tar_of((name, SYM, target))))
        assert not os.path.lexists(tmp_path / "vfs" / "L" / name)
    naive.apply_diff("L", "", io.BytesIO(tar_of(("a/l", SYM, "../etc"))))
    assert os.readlink(tmp_path / "vfs" / "L" / "a" / "l") == "../etc"


def test_import_refuses_a_climbing_symlink(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    good = tar_of(("etc/hostname", REG, "box"))
    bad = tar_of(("bin/sh", SYM, "../../../../usr/bin/evil"))
    archive = write_tar(docker_save_files([good, bad]), tmp_path / "image.tar")
    try:
        line = cli.fails(1, "import", str(archive))
        assert "points outside the layer" in line and "bin/sh" in line
        assert cli.ok("ls").out == ""  # the layers it made are gone again
    finally:
        cli.run("cleanup")


# -- PAX headers ----------------------------------------------------------------------------

def test_global_header_is_ignored(driver: aufs.Driver) -> None:
    """The same tar with and without a global header gives the same tree; a tar of only a
    global header is an empty layer."""
    glob = extended(b"g", pax_record(b"path", b"evil") + pax_record(b"uid", b"4242")
                    + pax_record(b"mtime", b"77") + pax_record(b"size", b"99999"),
                    name=b"foo/bar")
    body = member(b"a", b"one") + member(b"b", b"two") + END
    driver.create("plain")
    driver.apply_diff("plain", "", io.BytesIO(body))
    driver.create("global")
    driver.apply_diff("global", "", io.BytesIO(glob + body))
    assert snapshot(driver.layout.diff("global")) == snapshot(driver.layout.diff("plain"))
    driver.create("only")
    assert driver.apply_diff("only", "", io.BytesIO(glob + END)) == 0
    assert os.listdir(driver.layout.diff("only")) == []  # no foo/ either (TestXGlobalNoParent)


def test_over_large_extended_header_is_a_clear_error(driver: aufs.Driver) -> None:
    driver.create("L")
    big = extended(b"x", pax_record(b"comment", b"c" * (1 << 20)))
    with pytest.raises(aufs.archive.ArchiveError, match="too large"):
        driver.apply_diff("L", "", io.BytesIO(big + member(b"a") + END))
    assert os.listdir(driver.layout.diff("L")) == []


def _pax_bomb(path: Path, headers: int, size: int) -> None:
    """``headers`` consecutive ``x`` headers of ``size`` bytes, each with a key of its
    own (merged, they would all be held at once), then one file; gzip'd."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        for i in range(headers):
            key = b"AUFS.bomb.%06d" % i
            f.write(z.compress(extended(b"x", pax_record(key, b"a" * (size - len(key) - 16)))))
        f.write(z.compress(member(b"file", b"data") + END))
        f.write(z.flush())


# The CLI's main, then its own peak RSS (VmHWM: this process image only; a child's
# ru_maxrss would also count the pages of the parent it was forked from).
_MEASURED = ("import sys\n"
             "from aufs.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "with open('/proc/self/status') as f:\n"
             "    hwm = [line for line in f if line.startswith('VmHWM:')][0]\n"
             "sys.stderr.write(hwm)\n"
             "sys.exit(code)\n")


def test_pax_header_chain_is_bounded_in_memory(tmp_path: Path) -> None:
    """300 MB of extended headers in a < 1 MB gzip: applied (only the last one counts)
    within a bounded RSS; merged, they took 300 MB and more."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    bomb = tmp_path / "bomb.tar.gz"
    _pax_bomb(bomb, 300, 1_000_000)
    assert bomb.stat().st_size < 1 << 20
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    root = str(tmp_path / "store")
    try:
        p = subprocess.run([sys.executable, "-c", _MEASURED, "--root", root, "apply", "L",
                            str(bomb)], env=env, capture_output=True, text=True, timeout=300,
                           check=False)
    finally:
        subprocess.run([sys.executable, "-m", "aufs", "--root", root, "cleanup"], env=env,
                       check=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "4"
    peak_kib = int(p.stderr.split("VmHWM:")[1].split()[0])
    assert peak_kib < 150 * 1024, f"apply peaked at {peak_kib} KiB"


# -- union-private xattrs --------------------------------------------------------------------

PRIVATE = {"trusted.overlay.opaque": "y", "user.overlay.opaque": "y",
           "user.fuseoverlayfs.opaque": "y", "user.fuseoverlayfs.origin": "x"}


def test_union_private_xattrs_never_come_in(driver: aufs.Driver) -> None:
    """A layer cannot hide its parent's files through an engine's private xattr: the
    mount shows them, and changes and diff agree."""
    driver.create("base")
    driver.apply_diff("base", "", io.BytesIO(tar_of(("d", DIR, ""), ("d/f", REG, "parent"))))
    driver.create("top", "base")
    driver.apply_diff("top", "", io.BytesIO(tar_of(
        ("d", DIR, ""), ("d/g", REG, "child"),
        xattrs={"d": {**PRIVATE, "user.kept": "1"}, "d/g": PRIVATE})))
    for path in ("d", "d/g"):
        names = os.listxattr(f"{driver.layout.diff('top')}/{path}")
        assert not [n for n in names if n in PRIVATE], (path, names)
    assert os.getxattr(f"{driver.layout.diff('top')}/d", "user.kept") == b"1"
    root = driver.get("top")
    try:
        assert sorted(os.listdir(f"{root}/d")) == ["f", "g"]
    finally:
        driver.put("top")
    assert [(c.path, c.kind) for c in driver.changes("top")] == [
        ("/d", ChangeKind.MODIFY), ("/d/g", ChangeKind.ADD)]
    with driver.diff("top") as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        assert [m.name for m in tf] == ["d", "d/g"]


# -- an opaque layer root ----------------------------------------------------------------------

def _names(driver: aufs.Driver, id: str) -> list[str]:
    with driver.diff(id) as stream, tarfile.open(fileobj=stream, mode="r|") as tf:
        return [m.name for m in tf]


def test_opaque_root_hides_every_parent(driver: aufs.Driver) -> None:
    driver.create("base")
    driver.apply_diff("base", "", io.BytesIO(tar_of(("a", REG, "a"), ("d", DIR, ""),
                                                    ("d/x", REG, "x"))))
    driver.create("mid", "base")
    driver.apply_diff("mid", "", io.BytesIO(tar_of(("b", REG, "b"))))
    driver.create("top", "mid")
    assert driver.apply_diff("top", "", io.BytesIO(tar_of((WH_OPAQUE, REG, ""),
                                                          ("c", REG, "ccc")))) == 3
    driver.create("child", "top")
    driver.apply_diff("child", "", io.BytesIO(tar_of(("e", REG, "e"))))
    for id, expected in (("top", ["c"]), ("child", ["c", "e"])):
        root = driver.get(id)
        try:
            assert sorted(os.listdir(root)) == expected, id
        finally:
            driver.put(id)
    assert [(c.path, c.kind) for c in driver.changes("top")] == [
        ("/a", ChangeKind.DELETE), ("/b", ChangeKind.DELETE), ("/c", ChangeKind.ADD),
        ("/d", ChangeKind.DELETE)]
    assert [(c.path, c.kind) for c in driver.changes("child")] == [("/e", ChangeKind.ADD)]
    assert driver.diff_size("top") == 3
    assert _names(driver, "top") == [WH_OPAQUE, "c"]
    # The diff carries the marker: applied on the same parent, it mounts the same tree.
    driver.create("again", "mid")
    with driver.diff("top") as stream:
        driver.apply_diff("again", "", stream)
    root = driver.get("again")
    try:
        assert sorted(os.listdir(root)) == ["c"]
    finally:
        driver.put("again")
    # Against a parent that is not the direct one (compared mounted): the same answer.
    assert [(c.path, c.kind) for c in driver.changes("child", "mid")] == [
        ("/a", ChangeKind.DELETE), ("/b", ChangeKind.DELETE), ("/c", ChangeKind.ADD),
        ("/d", ChangeKind.DELETE), ("/e", ChangeKind.ADD)]
    assert driver.diff_size("child", "mid") == 4


# -- applying into a stacked layer --------------------------------------------------------------

def test_apply_into_a_lower_branch_of_a_mounted_union_is_refused(driver: aufs.Driver) -> None:
    driver.create("base")
    driver.apply_diff("base", "", io.BytesIO(tar_of(("f", REG, "f"))))
    driver.create("mid", "base")
    driver.create("top", "mid")
    root = driver.get("top")
    try:
        before = snapshot(driver.layout.diff("base"))
        for id in ("base", "mid"):
            with pytest.raises(LayerMountedError, match="lower branch of the mounted layer top"):
                driver.apply_diff(id, "", io.BytesIO(tar_of(("g", REG, "g"))))
        assert snapshot(driver.layout.diff("base")) == before
        assert sorted(os.listdir(root)) == ["f"]
        driver.create("other", "base")  # a sibling is no branch of top: it may change
        driver.apply_diff("other", "", io.BytesIO(tar_of(("g", REG, "g"))))
    finally:
        driver.put("top")
    driver.apply_diff("base", "", io.BytesIO(tar_of(("g", REG, "g"))))  # unmounted: fine

