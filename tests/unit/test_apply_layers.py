"""apply_diff through the driver, on every engine: Docker's TestHardlinks, AUFS
pseudo-links, every compression from a stream, a file and a pipe, tars made by GNU tar,
bsdtar and Python's tarfile, the size it returns, limits on names, the seeded clone."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

import aufs
from aufs.archive import ArchiveError
from aufs.archive.changes import diff_size
from aufs.whiteout import WH_OPAQUE, WH_PLINK, WH_PREFIX
from tests.safety.snapshot import snapshot

Entry = tuple[str, bytes, str, bytes]  # name, type, linkname, data


def make_tar(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, kind, link, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_500_000_000
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def f(name: str, data: bytes = b"data") -> Entry:
    return (name, tarfile.REGTYPE, "", data)


def d(name: str) -> Entry:
    return (name, tarfile.DIRTYPE, "", b"")


def h(name: str, target: str) -> Entry:
    return (name, tarfile.LNKTYPE, target, b"")


def s(name: str, target: str) -> Entry:
    return (name, tarfile.SYMTYPE, target, b"")


def test_hardlinks_docker(driver: aufs.Driver) -> None:
    """Docker's TestHardlinks: a hard link made in a child layer to a parent's file (the
    union copies the file up) survives diff -> apply into new layers."""
    driver.create("source-1")
    Path(driver.get("source-1"), "test_file").touch()
    driver.put("source-1")
    with driver.diff("source-1") as stream:
        tar1 = stream.read()
    driver.create("source-2", "source-1")
    mnt = driver.get("source-2")
    try:
        os.link(f"{mnt}/test_file", f"{mnt}/linked_file")
    finally:
        driver.put("source-2")
    with driver.diff("source-2", "source-1") as stream:
        tar2 = stream.read()
    driver.create("target-1")
    driver.apply_diff("target-1", "", io.BytesIO(tar1))
    driver.create("target-2", "target-1")
    driver.apply_diff("target-2", "target-1", io.BytesIO(tar2))
    mnt = driver.get("target-2")
    try:
        assert os.path.samestat(os.lstat(f"{mnt}/test_file"), os.lstat(f"{mnt}/linked_file"))
    finally:
        driver.put("target-2")


def test_aufs_pseudo_links(driver: aufs.Driver) -> None:
    """A tar of a real AUFS branch: files hard-linked through ``.wh..wh.plnk`` (Docker's
    UnpackLayer resolves them; the pseudo-link directory itself is not content)."""
    plnk = f"{WH_PLINK}/1234.5678"
    data = make_tar([d(WH_PLINK), f(plnk, b"shared"), f(f"{WH_PLINK}/99.1", b"unused"),
                     d("bin"), h("bin/a", plnk), h("bin/b", plnk), f(".wh..wh.aufs", b""),
                     d(".wh..wh.orph")])
    driver.create("L")
    size = driver.apply_diff("L", "", io.BytesIO(data))
    diff = driver.layout.diff("L")
    a, b = os.lstat(f"{diff}/bin/a"), os.lstat(f"{diff}/bin/b")
    assert os.path.samestat(a, b) and a.st_nlink == 2
    assert Path(diff, "bin", "a").read_bytes() == b"shared"
    assert sorted(os.listdir(diff)) == ["bin"]
    assert size == len(b"shared") == diff_size(diff)


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda b: b,
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),
}


def _sample() -> bytes:
    return make_tar([d("etc"), f("etc/hostname", b"box\n"), f("big", os.urandom(300_000)),
                     h("big-link", "big"), s("etc/mtab", "/proc/mounts")])


@pytest.mark.parametrize("kind", sorted(COMPRESS))
@pytest.mark.parametrize("source", ["stream", "file", "pipe"])
def test_compressions_and_sources(driver: aufs.Driver, tmp_path: Path, kind: str,
                                  source: str) -> None:
    plain = _sample()
    data = COMPRESS[kind](plain)
    driver.create("L")
    path = tmp_path / "layer.tar"
    path.write_bytes(data)
    if source == "stream":
        size = driver.apply_diff("L", "", io.BytesIO(data))
    elif source == "file":
        with open(path, "rb") as fh:
            size = driver.apply_diff("L", "", fh)
    else:
        with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as cat:
            assert cat.stdout is not None
            size = driver.apply_diff("L", "", cat.stdout)
    diff = driver.layout.diff("L")
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        big = tf.extractfile("big")
        assert big is not None
        assert Path(diff, "big").read_bytes() == big.read()
    assert os.readlink(f"{diff}/etc/mtab") == "/proc/mounts"
    assert size == 300_000 + 4 == diff_size(diff)


def build_source(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"data" * 5000)
    (root / "dir" / "big").write_bytes(os.urandom(400_000))
    os.link(root / "dir" / "file", root / "dir" / "sub" / "hard")
    os.symlink("/absolute/target", root / "dir" / "abs")
    os.mkfifo(root / "dir" / "fifo", 0o600)
    os.mknod(root / "dir" / "tty", 0o620 | stat.S_IFCHR, os.makedev(4, 1))
    (root / "suid").write_bytes(b"x")
    os.chown(root / "suid", 0, 42)
    os.chmod(root / "suid", 0o6755)
    os.chown(root / "dir" / "sub", 1000, 1001)
    os.chmod(root / "dir" / "sub", 0o1777)
    os.setxattr(root / "dir" / "file", "user.k", b"v")
    deep = root / "l" / ("n" * 100) / ("m" * 100)
    deep.mkdir(parents=True)
    (deep / ("f" * 150)).write_bytes(b"long")
    for path, when in ((root / "dir" / "file", 1_000_000_001),
                       (root / "dir" / "sub", 1_000_000_002), (root / "dir", 1_000_000_003)):
        os.utime(path, (when, when))


TOOLS: dict[str, list[str]] = {
    "gnu-tar": ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf", "-", "."],
    "gnu-tar-posix": ["tar", "--format=posix", "--xattrs", "--xattrs-include=*",
                      "--numeric-owner", "-cf", "-", "."],
    "gnu-tar-gzip": ["tar", "--xattrs", "--xattrs-include=*", "-czf", "-", "."],
    "bsdtar": ["bsdtar", "--xattrs", "--numeric-owner", "-cf", "-", "."],
    "bsdtar-zstd": ["bsdtar", "--xattrs", "--zstd", "-cf", "-", "."],
}


def _without_root(snap: dict[str, tuple[object, ...]], xattrs: bool = True
                  ) -> dict[str, object]:
    snap.pop(".", None)
    return {k: (v if xattrs else v[:-1]) for k, v in snap.items()}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tars_of_other_tools(driver: aufs.Driver, tmp_path: Path, tool: str) -> None:
    argv = TOOLS[tool]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    src = tmp_path / "src"
    src.mkdir()
    build_source(src)
    tarball = tmp_path / "layer.tar"
    with open(tarball, "wb") as out:
        subprocess.run(argv, cwd=src, stdout=out, check=True)
    driver.create("L")
    with open(tarball, "rb") as fh:
        size = driver.apply_diff("L", "", fh)
    diff = driver.layout.diff("L")
    assert _without_root(snapshot(diff)) == _without_root(snapshot(str(src)))
    assert size == diff_size(diff) == diff_size(str(src))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tars_of_python_tarfile(driver: aufs.Driver, tmp_path: Path, fmt: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_source(src)
    if fmt == tarfile.USTAR_FORMAT:  # ustar: names of at most 100 + 155 bytes
        shutil.rmtree(src / "l")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        tf.add(src, arcname=".")
    driver.create("L")
    driver.apply_diff("L", "", io.BytesIO(buf.getvalue()))
    diff = driver.layout.diff("L")
    # tarfile.add stores no xattrs
    assert _without_root(snapshot(diff), xattrs=False) == _without_root(
        snapshot(str(src)), xattrs=False)


SIZE_CASES: dict[str, list[Entry]] = {
    "plain": [f("a", b"12345"), d("d"), f("d/b", b"xy")],
    "hard links once": [f("a", b"12345"), h("b", "a"), h("c", "b")],
    "link outlives its target": [f("a", b"12345"), h("b", "a"), f("a", b"1")],
    "replaced file": [f("a", b"12345"), f("a", b"123")],
    "whiteout of a file": [f("a", b"12345"), f(f"{WH_PREFIX}a", b""), f("b", b"1")],
    "whiteout of a dir": [d("d"), f("d/a", b"12345"), f(f"{WH_PREFIX}d", b"")],
    "opaque": [d("d"), f("d/a", b"12345"), f(f"d/{WH_OPAQUE}", b""), f("d/b", b"1")],
    "dir over file": [f("a", b"12345"), d("a"), f("a/b", b"12")],
    "symlink over file": [f("a", b"12345"), s("a", "x")],
    "link to a symlink": [s("a", "x"), h("b", "a")],
    "pseudo-links": [f(f"{WH_PLINK}/1.2", b"123"), h("x", f"{WH_PLINK}/1.2")],
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_returned_size_is_the_diff_size(driver: aufs.Driver, case: str) -> None:
    driver.create("L")
    size = driver.apply_diff("L", "", io.BytesIO(make_tar(SIZE_CASES[case])))
    assert size == diff_size(driver.layout.diff("L"))
    driver.create("M")
    Path(driver.layout.diff("M"), "seed").write_bytes(b"seeded")  # counted by a walk
    size = driver.apply_diff("M", "", io.BytesIO(make_tar(SIZE_CASES[case])))
    assert size == diff_size(driver.layout.diff("M"))


def test_names_too_long_or_too_deep(driver: aufs.Driver) -> None:
    driver.create("L")
    for name in ("/".join(["d"] * 600) + "/f", "/".join(["x" * 250] * 17)):
        with pytest.raises(ArchiveError, match=r"longer than|deeper than"):
            driver.apply_diff("L", "", io.BytesIO(make_tar([f(name)])))
    deep = "/".join(["d"] * 400) + "/f"  # deep, but within the limits
    driver.apply_diff("L", "", io.BytesIO(make_tar([f(deep)])))
    assert Path(driver.layout.diff("L"), deep).read_bytes() == b"data"
    driver.remove("L")


def test_the_seed_is_a_hard_link_clone(driver: aufs.Driver) -> None:
    """Untouched files keep their inodes (no copy); a replaced file is a new inode and
    the old one is not written into."""
    driver.create("L")
    diff = driver.layout.diff("L")
    Path(diff, "keep").write_text("keep")
    Path(diff, "replace").write_text("old")
    os.mkdir(f"{diff}/dir", 0o750)
    os.utime(f"{diff}/dir", (5, 5))
    keep, replace = os.lstat(f"{diff}/keep"), os.lstat(f"{diff}/replace")
    held = os.open(f"{diff}/replace", os.O_RDONLY)
    try:
        driver.apply_diff("L", "", io.BytesIO(make_tar([f("replace", b"new"), f("new")])))
        assert os.pread(held, 10, 0) == b"old"  # the old inode, untouched
    finally:
        os.close(held)
    assert os.lstat(f"{diff}/keep").st_ino == keep.st_ino
    assert os.lstat(f"{diff}/replace").st_ino != replace.st_ino
    st = os.stat(f"{diff}/dir")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o750, 5)


def test_directory_over_a_whiteout_is_opaque(driver: aufs.Driver) -> None:
    """OCI: a whiteout hides the lower entry, the layer's own entry of that name shows.
    A directory replacing a whiteout of this layer does not merge with the lower one."""
    driver.create("P")
    os.makedirs(f"{driver.layout.diff('P')}/foo")
    Path(driver.layout.diff("P"), "foo", "old").write_text("lower")
    os.makedirs(f"{driver.layout.diff('P')}/bar")
    Path(driver.layout.diff("P"), "bar", "old").write_text("lower")
    driver.create("L", "P")
    driver.apply_diff("L", "P", io.BytesIO(make_tar([
        f(f"{WH_PREFIX}foo", b""), d("foo"), f("foo/new", b"new")])))
    # and the same over a whiteout the layer already had
    driver.apply_diff("L", "P", io.BytesIO(make_tar([f(f"{WH_PREFIX}bar", b"")])))
    driver.apply_diff("L", "P", io.BytesIO(make_tar([d("bar"), f("bar/new", b"new")])))
    mnt = driver.get("L")
    try:
        assert os.listdir(f"{mnt}/foo") == ["new"]
        assert os.listdir(f"{mnt}/bar") == ["new"]
    finally:
        driver.put("L")
