"""Docker's pkg/archive tests (v20.10.24) that the suite did not have yet, ported onto
plain directories: changes_test.go (Changes, ChangesDirs, ExportChanges + ApplyLayer,
ChangesSize), archive_test.go (TarUntar, TarFiles, global headers, the ustar/GNU
conflict) and archive_unix_test.go (hard links, devices and FIFOs, parent permissions,
capabilities). The breakout tables are in tests/safety/test_docker_breakouts.py and
TestChangeString in test_changes_dirs.py.

Left out, with no counterpart here: exclude/include patterns and chown options of
TarWithOptions, CopyWithTar/CopyFileWithTar/UntarPath, TempArchive, ReplaceFileTarWrapper,
pigz, command streams and compression *writers* (we write gzip and zstd only).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aufs.archive import (
    Change,
    ChangeKind,
    changes_dirs,
    changes_size,
    export_changes,
    export_dir,
    extract_into_dir,
    layer_changes,
)
from aufs.archive import tarread as t
from tests.unit.test_apply_tarread import END, _header, extended, member, pax_record, read_all

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
ROOT = os.geteuid() == 0


def _changes(changes: list[Change]) -> list[tuple[str, ChangeKind]]:
    return [(c.path, c.kind) for c in changes]


# -- changes_test.go's sample tree ---------------------------------------------------------------

def create_sample_dir(root: Path) -> None:
    """createSampleDir: files, directories and symlinks (two of them absolute)."""
    now = time.time()
    files: list[tuple[str, str, str, int]] = [  # (kind, path, contents, mode)
        ("f", "file1", "file1\n", 0o600), ("f", "file2", "file2\n", 0o666),
        ("f", "file3", "file3\n", 0o404), ("f", "file4", "file4\n", 0o600),
        ("f", "file5", "file5\n", 0o600), ("f", "file6", "file6\n", 0o600),
        ("f", "file7", "file7\n", 0o600),
        ("d", "dir1", "", 0o740),
        ("f", "dir1/file1-1", "file1-1\n", 0o1444), ("f", "dir1/file1-2", "file1-2\n", 0o666),
        ("d", "dir2", "", 0o700),
        ("f", "dir2/file2-1", "file2-1\n", 0o666), ("f", "dir2/file2-2", "file2-2\n", 0o666),
        ("d", "dir3", "", 0o700),
        ("f", "dir3/file3-1", "file3-1\n", 0o666), ("f", "dir3/file3-2", "file3-2\n", 0o666),
        ("d", "dir4", "", 0o700),
        ("f", "dir4/file3-1", "file4-1\n", 0o666), ("f", "dir4/file3-2", "file4-2\n", 0o666),
        ("l", "symlink1", "target1", 0), ("l", "symlink2", "target2", 0),
        ("l", "symlink3", f"{root}/file1", 0), ("l", "symlink4", f"{root}/symlink3", 0),
        ("l", "dirSymlink", f"{root}/dir1", 0),
    ]
    for kind, rel, contents, mode in files:
        p = root / rel
        if kind == "d":
            p.mkdir(parents=True)
            os.chmod(p, mode)
        elif kind == "f":
            p.write_text(contents)
            os.chmod(p, mode)
        else:
            os.symlink(contents, p)
        if kind != "l":
            os.utime(p, (now, now))


def mutate_sample_dir(root: Path) -> None:
    """mutateSampleDir."""
    later = time.time() + 1
    (root / "file1").unlink()
    subprocess.run(["rm", "-rf", str(root / "dir1")], check=True)
    (root / "symlink1").unlink()
    (root / "file2").write_text("fileNN\n")
    (root / "file3").unlink()
    (root / "file3").write_text("fileMM\n")
    os.chmod(root / "file3", 0o404)
    os.utime(root / "file4", (later, later))
    (root / "file5").unlink()
    (root / "file5").mkdir(0o666)
    (root / "filenew").write_text("filenew\n")
    (root / "dirnew").mkdir(0o766)
    os.symlink("targetnew", root / "symlinknew")
    (root / "symlink2").unlink()
    os.symlink("target2change", root / "symlink2")
    subprocess.run(["rm", "-rf", str(root / "dir2")], check=True)
    (root / "dir2").write_text("dir2\n")
    os.utime(root / "dir3", (later, later))


def copy_dir(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    create_sample_dir(src)
    return src


def test_changes_with_no_changes(sample: Path, tmp_path: Path) -> None:
    """TestChangesWithNoChanges."""
    rw = tmp_path / "rw"
    rw.mkdir()
    assert layer_changes([str(sample)], str(rw)) == []


def test_changes_with_changes(sample: Path, tmp_path: Path) -> None:
    """TestChangesWithChanges."""
    (sample / "dir1" / "subfolder").mkdir(0o740)
    rw = tmp_path / "rw"
    (rw / "dir1").mkdir(parents=True)
    os.chmod(rw / "dir1", 0o740)
    (rw / "dir1" / ".wh.file1-2").write_bytes(b"")
    (rw / "dir1" / "file1-1").write_bytes(b"\0")
    os.chmod(rw / "dir1" / "file1-1", 0o1444)
    (rw / "dir1" / "subfolder").mkdir(0o740)
    (rw / "dir1" / "subfolder" / "newFile").write_bytes(b"")
    assert _changes(layer_changes([str(sample)], str(rw))) == [
        ("/dir1", C), ("/dir1/file1-1", C), ("/dir1/file1-2", D), ("/dir1/subfolder", C),
        ("/dir1/subfolder/newFile", A)]


def test_changes_with_changes_gh13590(tmp_path: Path) -> None:
    """TestChangesWithChangesGH13590: a copied tree, one file replaced, then one changed."""
    base = tmp_path / "base"
    (base / "dir1" / "dir2" / "dir3").mkdir(parents=True)
    (base / "dir1" / "dir2" / "dir3" / "file.txt").write_text("hello")
    layer = tmp_path / "layer"
    layer.mkdir()
    copy_dir(base / "dir1", layer / "dir1")
    (layer / "dir1" / "dir2" / "dir3" / "file.txt").unlink()
    (layer / "dir1" / "dir2" / "dir3" / "file1.txt").write_text("bye")
    assert _changes(layer_changes([str(base)], str(layer))) == [
        ("/dir1/dir2/dir3", C), ("/dir1/dir2/dir3/file1.txt", A)]
    layer2 = tmp_path / "layer2"
    layer2.mkdir()
    copy_dir(base / "dir1", layer2 / "dir1")
    (layer2 / "dir1" / "dir2" / "dir3" / "file.txt").write_text("bye")
    assert _changes(layer_changes([str(base)], str(layer2))) == [
        ("/dir1/dir2/dir3/file.txt", C)]


def test_changes_dirs_empty(sample: Path, tmp_path: Path) -> None:
    """TestChangesDirsEmpty: a copy has no changes."""
    dst = tmp_path / "copy"
    copy_dir(sample, dst)
    assert changes_dirs(str(dst), str(sample)) == []


def test_changes_dirs_mutated(sample: Path, tmp_path: Path) -> None:
    """TestChangesDirsMutated (Linux: a directory's time alone is no change)."""
    dst = tmp_path / "copy"
    copy_dir(sample, dst)
    mutate_sample_dir(dst)
    assert _changes(changes_dirs(str(dst), str(sample))) == [
        ("/dir1", D), ("/dir2", C), ("/dirnew", A), ("/file1", D), ("/file2", C),
        ("/file3", C), ("/file4", C), ("/file5", C), ("/filenew", A), ("/symlink1", D),
        ("/symlink2", C), ("/symlinknew", A)]


def test_apply_layer(sample: Path, tmp_path: Path) -> None:
    """TestApplyLayer: ChangesDirs -> ExportChanges -> ApplyLayer on the original gives
    the mutated tree (absolute symlinks into the tree included)."""
    dst = tmp_path / "copy"
    copy_dir(sample, dst)
    mutate_sample_dir(dst)
    changes = changes_dirs(str(dst), str(sample))
    with export_changes(str(dst), changes) as stream:
        layer = stream.read()
    extract_into_dir(str(sample), io.BytesIO(layer))
    assert changes_dirs(str(sample), str(dst)) == []


def prepare_untar_source(n: int, root: Path, links: bool) -> int:
    """prepareUntarSourceDirectory: n files of "fooo", each maybe with a hard link."""
    for i in range(n):
        (root / f"file-{i}").write_bytes(b"fooo")
        os.chmod(root / f"file-{i}", 0o700)
        if links:
            os.link(root / f"file-{i}", root / f"file-{i}-link")
    return n * 4


def test_changes_size_with_hardlinks(tmp_path: Path) -> None:
    """TestChangesSizeWithHardlinks: each inode counted once."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    size = prepare_untar_source(100, dst, True)
    assert changes_size(str(dst), changes_dirs(str(dst), str(src))) == size


def test_changes_size_without_changes_or_with_deletes_only(tmp_path: Path) -> None:
    """TestChangesSizeWithNoChanges, TestChangesSizeWithOnlyDeleteChanges."""
    assert changes_size(str(tmp_path), []) == 0
    assert changes_size(str(tmp_path), [Change("/deletedPath", D)]) == 0


def test_changes_size(tmp_path: Path) -> None:
    """TestChangesSize: added and modified files count."""
    for name in ("addition", "modification"):
        (tmp_path / name).write_bytes(b"\x01\x01\x01")
    assert changes_size(str(tmp_path), [Change("/addition", A),
                                        Change("/modification", C)]) == 6


# -- archive_test.go ---------------------------------------------------------------------------

_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


def _tar_untar(origin: Path, dest: Path, compress: Callable[[bytes], bytes]) -> list[Change]:
    with export_dir(str(origin)) as stream:
        data = compress(stream.read())
    dest.mkdir()
    extract_into_dir(str(dest), io.BytesIO(data))
    return changes_dirs(str(origin), str(dest))


@pytest.mark.parametrize("compression", sorted(_COMPRESS))
def test_tar_untar(tmp_path: Path, compression: str) -> None:
    """TestTarUntar (and TestDecompressStream*): no changes after a round trip."""
    origin = tmp_path / "origin"
    origin.mkdir()
    for name, data in (("1", b"hello world"), ("2", b"welcome!"), ("3", b"will be kept")):
        (origin / name).write_bytes(data)
        os.chmod(origin / name, 0o700)
    assert _tar_untar(origin, tmp_path / "dest", _COMPRESS[compression]) == []


@pytest.mark.parametrize("links", [False, True])
def test_tar_files(tmp_path: Path, links: bool) -> None:
    """TestTarFiles: 1000 files, with and without hard links, round trip unchanged."""
    src = tmp_path / "src"
    src.mkdir()
    prepare_untar_source(1000, src, links)
    assert _tar_untar(src, tmp_path / "dest", _COMPRESS["none"]) == []


def test_global_header_does_not_fail(tmp_path: Path) -> None:
    """TestTypeXGlobalHeaderDoesNotFail, TestXGlobalNoParent: a tar of one global header
    named ``foo/bar`` extracts to nothing (no ``foo``)."""
    extract_into_dir(str(tmp_path), io.BytesIO(extended(b"g", b"", name=b"foo/bar") + END))
    assert os.listdir(tmp_path) == []
    data = extended(b"g", pax_record(b"comment", b"x"), name=b"pax_global_header")
    extract_into_dir(str(tmp_path), io.BytesIO(data + member(b"f", b"x") + END))
    assert os.listdir(tmp_path) == ["f"]


def test_untar_ustar_gnu_conflict() -> None:
    """TestUntarUstarGnuConflict: a ustar header with a long name in its prefix field and
    a GNU base-256 owner (testdata/broken.tar has both) reads with its whole name."""
    prefix = b"root/.cpanm/work/1395823785.24209/Plack-1.0030/blib/man3"
    name = b"Plack::Middleware::LighttpdScriptNameFix.3pm"
    block = bytearray(_header(name, b"0", 4))
    block[108:116] = b"\x80" + (2**40).to_bytes(7, "big")  # GNU base-256 uid
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    (m, data), = read_all(bytes(block) + b"data" + bytes(508) + END)
    assert (m.name, m.uid, data) == ((prefix + b"/" + name).decode(), 2**40, b"data")
    assert m.kind == t.REG


# -- archive_unix_test.go ---------------------------------------------------------------------

def test_tar_with_hard_link(tmp_path: Path) -> None:
    """TestTarWithHardLink: the second name is a link member; untarred, one inode."""
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "1").write_text("hello world")
    os.link(origin / "1", origin / "2")
    with export_dir(str(origin)) as stream:
        data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [(m.name, m.type, m.linkname) for m in tf] == [
            ("1", tarfile.REGTYPE, ""), ("2", tarfile.LNKTYPE, "1")]
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_into_dir(str(dest), io.BytesIO(data))
    assert os.stat(dest / "1").st_ino == os.stat(dest / "2").st_ino


def test_untar_parent_path_permissions(tmp_path: Path) -> None:
    """TestUntarParentPathPermissions: a missing parent is made 0755."""
    extract_into_dir(str(tmp_path), io.BytesIO(member(b"foo/bar") + END))
    assert stat.S_IMODE(os.lstat(tmp_path / "foo").st_mode) == 0o755
    assert os.path.isfile(tmp_path / "foo" / "bar")


@pytest.mark.skipif(not ROOT, reason="needs root (mknod)")
def test_tar_with_block_char_fifo(tmp_path: Path) -> None:
    """TestTarWithBlockCharFifo: devices and a FIFO round trip unchanged."""
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "1").write_text("hello world")
    os.mknod(origin / "2", stat.S_IFBLK | 0o600, os.makedev(12, 5))
    os.mknod(origin / "3", stat.S_IFCHR | 0o600, os.makedev(12, 5))
    os.mkfifo(origin / "4", 0o600)
    assert _tar_untar(origin, tmp_path / "dest", _COMPRESS["none"]) == []
    st = os.lstat(tmp_path / "dest" / "2")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(12, 5)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "dest" / "4").st_mode)


@pytest.mark.skipif(not ROOT, reason="needs root (security.capability)")
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_tar_untar_with_xattr(tmp_path: Path, compression: str) -> None:
    """TestTarUntarWithXattr: a file capability (cap_block_suspend+ep) is kept."""
    origin = tmp_path / "origin"
    origin.mkdir()
    for name, data in (("1", b"hello world"), ("2", b"welcome!")):
        (origin / name).write_bytes(data)
    # VFS_CAP_REVISION_2 | effective, permitted = CAP_BLOCK_SUSPEND (36): bit 4 of word 1
    cap = (0x02000001).to_bytes(4, "little") + bytes(8) + (1 << 4).to_bytes(4, "little") \
        + bytes(4)
    os.setxattr(origin / "2", "security.capability", cap)
    assert _tar_untar(origin, tmp_path / "dest", _COMPRESS[compression]) == []
    assert os.getxattr(tmp_path / "dest" / "2", "security.capability") == cap
