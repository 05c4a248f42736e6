"""Changes between two whole trees (the naive path) and the tar of such changes."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path
from typing import IO

import pytest

from aufs.archive import Change, ChangeKind
from aufs.archive.export import export_changes
from aufs.archive.treediff import changes_dirs, changes_size
from tests.unit.test_changes import A, C, D, mkdir, same_dir_times, write

ROOT = os.geteuid() == 0
T = 1_600_000_000


@pytest.fixture
def old(tmp_path: Path) -> Path:
    d = tmp_path / "old"
    write(d, "etc/passwd", "root")
    write(d, "etc/hosts", "localhost")
    write(d, "bin/sh", "sh")
    write(d, "var/lib/dpkg/status", "ok")
    write(d, "var/lib/apt/lists", "l")
    os.symlink("sh", d / "bin" / "bash")
    same_dir_times(d)
    return d


@pytest.fixture
def new(tmp_path: Path, old: Path) -> Path:
    d = tmp_path / "new"
    shutil.copytree(old, d, symlinks=True)  # copy2: same modes and times, new inodes
    same_dir_times(d)
    return d


def test_identical_trees_have_no_changes(old: Path, new: Path) -> None:
    assert changes_dirs(str(new), str(old)) == []


def test_against_nothing_everything_is_added(old: Path) -> None:
    changes = changes_dirs(str(old), None)
    assert all(c.kind is ChangeKind.ADD for c in changes)
    assert [c.path for c in changes] == ["/bin", "/bin/bash", "/bin/sh", "/etc", "/etc/hosts",
                                         "/etc/passwd", "/var", "/var/lib", "/var/lib/apt",
                                         "/var/lib/apt/lists", "/var/lib/dpkg",
                                         "/var/lib/dpkg/status"]


def test_modify_add_delete(old: Path, new: Path) -> None:
    write(new, "etc/passwd", "root,user")  # size differs
    write(new, "etc/hosts", "localhost", mtime=T + 1)  # only the mtime differs
    write(new, "etc/new")
    os.unlink(new / "bin" / "sh")
    shutil.rmtree(new / "var" / "lib")
    same_dir_times(new)
    assert changes_dirs(str(new), str(old)) == [
        C("/bin"), D("/bin/sh"), C("/etc"), C("/etc/hosts"), A("/etc/new"), C("/etc/passwd"),
        C("/var"), D("/var/lib")]


def test_directory_mtime_alone_is_no_change(old: Path, new: Path) -> None:
    os.utime(new / "etc", (T + 100, T + 100))
    assert changes_dirs(str(new), str(old)) == []
    os.chmod(new / "etc", 0o700)
    assert changes_dirs(str(new), str(old)) == [C("/etc")]


def test_truncated_mtime_is_no_change(old: Path, new: Path) -> None:
    os.utime(old / "etc" / "hosts", ns=(T * 10**9 + 999, T * 10**9 + 999))
    assert changes_dirs(str(new), str(old)) == []


def test_symlink_target_change(old: Path, new: Path) -> None:
    os.unlink(new / "bin" / "bash")
    os.symlink("dash", new / "bin" / "bash")
    os.utime(new / "bin" / "bash", (T, T), follow_symlinks=False)
    os.utime(old / "bin" / "bash", (T, T), follow_symlinks=False)
    same_dir_times(new)
    assert changes_dirs(str(new), str(old)) == [C("/bin"), C("/bin/bash")]


def test_file_replaced_by_directory_and_back(old: Path, new: Path) -> None:
    os.unlink(new / "etc" / "passwd")
    write(new, "etc/passwd/inside")
    shutil.rmtree(new / "var" / "lib")
    write(new, "var/lib", "a file now")
    same_dir_times(new)
    assert changes_dirs(str(new), str(old)) == [
        C("/etc"), C("/etc/passwd"), A("/etc/passwd/inside"), C("/var"), C("/var/lib")]


@pytest.mark.skipif(not ROOT, reason="security.capability needs root")
def test_capability_change_is_a_modify(old: Path, new: Path) -> None:
    cap = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)
    os.setxattr(new / "bin" / "sh", "security.capability", cap)
    assert changes_dirs(str(new), str(old)) == [C("/bin"), C("/bin/sh")]


def test_shared_inodes_are_pruned(tmp_path: Path, old: Path) -> None:
    linked = tmp_path / "linked"
    shutil.copytree(old, linked, symlinks=True, copy_function=os.link)
    same_dir_times(linked)
    os.utime(old / "etc" / "passwd", (T + 50, T + 50))  # same inode in both trees
    write(linked, "etc/added")
    same_dir_times(linked)
    assert changes_dirs(str(linked), str(old)) == [C("/etc"), A("/etc/added")]


def test_housekeeping_names_are_ignored(old: Path, new: Path) -> None:
    mkdir(new, ".wh..wh.plnk")
    write(new, ".wh..wh.aufs", "")
    assert changes_dirs(str(new), str(old)) == []


def test_changes_size_counts_regular_files_once(old: Path, new: Path) -> None:
    write(new, "etc/passwd", "x" * 100)
    write(new, "big", "y" * 1000)
    os.link(new / "big", new / "big-link")
    same_dir_times(new)
    changes = changes_dirs(str(new), str(old))
    assert A("/big-link") in changes and C("/etc") in changes  # a changed child lists it
    assert changes_size(str(new), changes) == 1100
    assert changes_size(str(new), [D("/etc/passwd"), C("/etc"), A("/gone")]) == 0


def members_of(stream: IO[bytes]) -> dict[str, tarfile.TarInfo]:
    """Members by name; a regular file's content is kept in ``CONTENT[name]``."""
    data = stream.read()
    CONTENT.clear()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        out = {m.name: m for m in tar.getmembers()}
        for m in out.values():
            if m.isreg() and m.size:
                f = tar.extractfile(m)
                assert f is not None
                CONTENT[m.name] = f.read().decode()
    return out


CONTENT: dict[str, str] = {}


def test_export_changes(old: Path, new: Path) -> None:
    write(new, "etc/passwd", "root,user")
    write(new, "etc/dir/file", "f")
    os.unlink(new / "bin" / "sh")
    shutil.rmtree(new / "var" / "lib")
    same_dir_times(new)
    changes = changes_dirs(str(new), str(old))
    calls: list[int] = []
    with export_changes(str(new), reversed(changes), on_close=[lambda: calls.append(1)]) as s:
        m = members_of(s)
    assert calls == [1]
    assert list(m) == ["bin", "bin/.wh.sh", "etc", "etc/dir", "etc/dir/file", "etc/passwd",
                       "var", "var/.wh.lib"]
    assert CONTENT["etc/passwd"] == "root,user"
    assert m["bin/.wh.sh"].isreg() and m["bin/.wh.sh"].size == 0
    assert m["var"].isdir() and "var/lib/dpkg" not in m  # a directory alone, not its tree


def test_export_changes_skips_vanished_paths(new: Path) -> None:
    with export_changes(str(new), [A("/not-there"), A("/etc/passwd"),
                                   A("/no/such/dir/file")]) as s:
        assert list(members_of(s)) == ["etc/passwd"]


def test_export_changes_never_follows_a_symlinked_parent(tmp_path: Path, new: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret", "secret")
    os.symlink(outside, new / "link")
    with export_changes(str(new), [C("/link"), A("/link/secret")]) as s:
        m = members_of(s)
    assert list(m) == ["link"] and m["link"].issym()


def test_change_is_printed_like_docker() -> None:
    assert [str(c) for c in (A("/a"), C("/b"), D("/c"))] == ["A /a", "C /b", "D /c"]
    assert Change("/x", ChangeKind.ADD) == A("/x")
