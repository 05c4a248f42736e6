"""Change detection on plain layer directories (no mount), both whiteout formats."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aufs.archive import Change, ChangeKind
from aufs.archive.changes import diff_size, layer_changes, same_fs_time
from aufs.whiteout import AUFS, OVERLAY, WhiteoutFormat

ROOT = os.geteuid() == 0
FORMATS = [pytest.param(AUFS, id="aufs"),
           pytest.param(OVERLAY, id="overlay",
                        marks=pytest.mark.skipif(not ROOT, reason="overlay whiteouts need root"))]
T = 1_600_000_000


def A(p: str) -> Change:
    return Change(p, ChangeKind.ADD)


def C(p: str) -> Change:
    return Change(p, ChangeKind.MODIFY)


def D(p: str) -> Change:
    return Change(p, ChangeKind.DELETE)


def write(root: Path, rel: str, data: str = "x", mtime: int = T) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(data)
    os.utime(p, (mtime, mtime))
    return p


def mkdir(root: Path, rel: str, mode: int = 0o755, mtime: int = T) -> Path:
    p = root / rel
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, mode)
    os.utime(p, (mtime, mtime))
    return p


def same_dir_times(*dirs: Path, mtime: int = T) -> None:
    """Give every directory under ``dirs`` the same mtime (as after a plain copy-up)."""
    for d in dirs:
        for dirpath, _, _ in os.walk(d):
            os.utime(dirpath, (mtime, mtime))


def whiteout(fmt: WhiteoutFormat, directory: Path, name: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fmt.make_whiteout(fd, name)
    finally:
        os.close(fd)


def opaque(fmt: WhiteoutFormat, directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fmt.make_opaque(fd)
    finally:
        os.close(fd)


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    low = tmp_path / "lower"
    write(low, "etc/passwd", "root")
    write(low, "etc/group", "root")
    write(low, "usr/bin/ls", "ls")
    write(low, "usr/bin/cat", "cat")
    write(low, "opt/app/a", "a")
    write(low, "opt/app/b", "b")
    write(low, "opt/app/sub/c", "c")
    same_dir_times(low)
    return low


@pytest.fixture
def rw(tmp_path: Path) -> Path:
    d = tmp_path / "rw"
    d.mkdir()
    return d


def test_add_modify_and_unchanged_directory(lower: Path, rw: Path) -> None:
    write(rw, "new-file")
    write(rw, "etc/passwd", "root,changed")
    same_dir_times(rw)  # /etc copied up unchanged: same mode, size, mtime
    assert layer_changes([str(lower)], str(rw)) == [C("/etc/passwd"), A("/new-file")]


def test_directory_with_other_mode_or_mtime_is_modified(lower: Path, rw: Path) -> None:
    mkdir(rw, "etc", mode=0o700)
    mkdir(rw, "usr", mtime=T + 5)
    assert layer_changes([str(lower)], str(rw)) == [C("/etc"), C("/usr")]


def test_same_fs_time_tolerates_truncated_seconds(lower: Path, rw: Path) -> None:
    os.utime(lower / "etc", ns=(T * 10**9 + 123_456_789, T * 10**9 + 123_456_789))
    mkdir(rw, "etc", mtime=T)  # a tar restored it without the nanoseconds
    assert layer_changes([str(lower)], str(rw)) == []
    assert same_fs_time(T * 10**9, T * 10**9 + 5)
    assert same_fs_time(T * 10**9 + 5, T * 10**9)
    assert not same_fs_time(T * 10**9 + 5, T * 10**9 + 6)
    assert not same_fs_time(T * 10**9, (T + 1) * 10**9)


def test_added_child_lists_its_directory(lower: Path, rw: Path) -> None:
    write(rw, "usr/bin/new")
    same_dir_times(rw)  # even with the directory's stats unchanged (Docker's rule)
    assert layer_changes([str(lower)], str(rw)) == [C("/usr/bin"), A("/usr/bin/new")]


def test_added_directory_lists_every_child_once(lower: Path, rw: Path) -> None:
    write(rw, "srv/www/index.html")
    assert layer_changes([str(lower)], str(rw)) == [A("/srv"), A("/srv/www"),
                                                  A("/srv/www/index.html")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_whiteouts_are_deletes(lower: Path, rw: Path, fmt: WhiteoutFormat) -> None:
    mkdir(rw, "usr/bin")
    whiteout(fmt, rw / "usr" / "bin", "cat")
    whiteout(fmt, rw, "opt")
    same_dir_times(rw)
    assert layer_changes([str(lower)], str(rw)) == [D("/opt"), C("/usr/bin"), D("/usr/bin/cat")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_opaque_directory_replaces_the_parents(lower: Path, rw: Path,
                                               fmt: WhiteoutFormat) -> None:
    write(rw, "opt/app/a", "new a")
    write(rw, "opt/app/sub/d", "d")
    write(rw, "opt/app/z", "z")
    same_dir_times(rw)
    opaque(fmt, rw / "opt" / "app")
    assert layer_changes([str(lower)], str(rw)) == [
        C("/opt/app"), C("/opt/app/a"), D("/opt/app/b"), C("/opt/app/sub"),
        D("/opt/app/sub/c"), A("/opt/app/sub/d"), A("/opt/app/z")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_whiteout_in_a_middle_layer_hides_the_lower(tmp_path: Path, lower: Path, rw: Path,
                                                    fmt: WhiteoutFormat) -> None:
    middle = tmp_path / "middle"
    mkdir(middle, "usr/bin")
    whiteout(fmt, middle / "usr" / "bin", "ls")
    whiteout(fmt, middle, "opt")
    same_dir_times(middle)
    write(rw, "usr/bin/ls", "re-added")
    write(rw, "usr/bin/cat", "changed")
    write(rw, "opt/app/a", "re-added")
    same_dir_times(rw)
    # Docker's walk would call the three MODIFY (they exist in the lowest layer); the
    # parents' union has neither /usr/bin/ls nor /opt.
    assert layer_changes([str(middle), str(lower)], str(rw)) == [
        A("/opt"), A("/opt/app"), A("/opt/app/a"), C("/usr/bin"), C("/usr/bin/cat"),
        A("/usr/bin/ls")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_opaque_middle_layer_hides_the_lower(tmp_path: Path, lower: Path, rw: Path,
                                             fmt: WhiteoutFormat) -> None:
    middle = tmp_path / "middle"
    write(middle, "opt/app/only-middle")
    same_dir_times(middle)
    opaque(fmt, middle / "opt" / "app")
    write(rw, "opt/app/a")
    write(rw, "opt/app/only-middle", "changed")
    same_dir_times(rw)
    assert layer_changes([str(middle), str(lower)], str(rw)) == [
        C("/opt/app"), A("/opt/app/a"), C("/opt/app/only-middle")]


def test_path_only_in_a_deeper_layer_is_modified(tmp_path: Path, lower: Path, rw: Path) -> None:
    middle = tmp_path / "middle"
    write(middle, "other")
    same_dir_times(middle)
    write(rw, "etc/group", "changed")
    same_dir_times(rw)
    assert layer_changes([str(middle), str(lower)], str(rw)) == [C("/etc/group")]


def test_file_replaced_by_directory_and_back(lower: Path, rw: Path) -> None:
    write(rw, "etc/passwd/inside")  # a directory where the parent had a file
    mkdir(rw, "opt")
    write(rw, "opt/app", "now a file")
    same_dir_times(rw)
    assert layer_changes([str(lower)], str(rw)) == [
        C("/etc/passwd"), A("/etc/passwd/inside"), C("/opt/app")]


def test_housekeeping_is_never_a_change(lower: Path, rw: Path) -> None:
    mkdir(rw, ".wh..wh.plnk")
    write(rw, ".wh..wh.plnk/123.45")
    write(rw, ".wh..wh.aufs", "")
    mkdir(rw, ".wh..wh.orph")
    write(rw, "added")
    assert layer_changes([str(lower)], str(rw)) == [A("/added")]


def test_no_parents_means_everything_is_added(rw: Path) -> None:
    write(rw, "b/c")
    write(rw, "a")
    assert layer_changes([], str(rw)) == [A("/a"), A("/b"), A("/b/c")]


def test_sorted_by_path_bytes_order(lower: Path, rw: Path) -> None:
    write(rw, "a/b")
    write(rw, "a.txt")
    write(rw, "a-b")
    changes = layer_changes([str(lower)], str(rw))
    assert [c.path for c in changes] == ["/a", "/a-b", "/a.txt", "/a/b"]
    assert [str(c) for c in changes] == ["A /a", "A /a-b", "A /a.txt", "A /a/b"]


def test_symlinks_in_lower_are_not_followed(tmp_path: Path, rw: Path) -> None:
    low = tmp_path / "low"
    low.mkdir()
    os.symlink("/etc", low / "etc")  # a symlink to a directory, not a directory
    write(rw, "etc/passwd")
    same_dir_times(rw)
    assert layer_changes([str(low)], str(rw)) == [C("/etc"), A("/etc/passwd")]


def test_missing_lower_directory_is_skipped(tmp_path: Path, rw: Path) -> None:
    write(rw, "f")
    assert layer_changes([str(tmp_path / "gone")], str(rw)) == [A("/f")]


def test_layer_directory_reached_by_a_symlink(tmp_path: Path, rw: Path) -> None:
    """A layer migrated in place: diff/<id> is a symlink; below it none is followed."""
    low = mkdir(tmp_path, "low")
    write(low, "etc/passwd")
    write(rw, "etc/passwd", "changed")
    write(rw, "new")
    os.symlink(str(tmp_path / "elsewhere"), rw / "linkdir")
    write(tmp_path, "elsewhere/inside")
    same_dir_times(rw, low)
    link = tmp_path / "layer-link"
    link.symlink_to(rw)
    assert layer_changes([str(low)], str(link)) == [C("/etc/passwd"), A("/linkdir"), A("/new")]




def test_diff_size_counts_regular_files_once(tmp_path: Path) -> None:
    d = tmp_path / "layer"
    write(d, "a", "x" * 1000)
    write(d, "sub/b", "y" * 24)
    os.link(d / "a", d / "sub" / "a-link")
    os.symlink("a" * 50, d / "symlink")
    whiteout(AUFS, d, "gone")
    mkdir(d, ".wh..wh.plnk")
    os.link(d / "sub" / "b", d / ".wh..wh.plnk" / "1.2")
    write(d, ".wh..wh.plnk/orphan", "z" * 500)
    assert diff_size(str(d)) == 1024


@pytest.mark.skipif(not ROOT, reason="overlay whiteouts need root")
def test_diff_size_ignores_overlay_whiteouts(tmp_path: Path) -> None:
    d = tmp_path / "layer"
    write(d, "a", "abc")
    whiteout(OVERLAY, d, "gone")
    assert stat.S_ISCHR(os.lstat(d / "gone").st_mode)
    assert diff_size(str(d)) == 3


def test_diff_size_of_empty_layer(tmp_path: Path) -> None:
    assert diff_size(str(tmp_path)) == 0


@pytest.mark.skipif(not ROOT, reason="device nodes need root")
def test_fuse_overlayfs_bookkeeping_devices_are_ignored(lower: Path, rw: Path) -> None:
    mkdir(rw, "opt/app")
    os.mknod(rw / "opt" / "app" / ".wh..opq", stat.S_IFCHR, 0)  # fuse-overlayfs's own
    same_dir_times(rw)
    assert layer_changes([str(lower)], str(rw) + "/") == []


def test_change_is_the_frozen_dataclass_api_md_names(lower: Path, rw: Path) -> None:
    """API.md: ``Change(path, kind)`` is a frozen dataclass — what dataclasses' own
    functions see, made by hand or by layer_changes (which sets the slots directly)."""
    import dataclasses
    import pickle

    (rw / "new").write_text("x")
    made = layer_changes([str(lower)], str(rw))
    by_hand = Change("/new", ChangeKind.ADD)
    assert by_hand in made
    for c in (by_hand, made[made.index(by_hand)]):
        assert dataclasses.is_dataclass(c)
        assert [f.name for f in dataclasses.fields(c)] == ["path", "kind"]
        assert dataclasses.asdict(c) == {"path": "/new", "kind": ChangeKind.ADD}
        assert dataclasses.astuple(c) == ("/new", ChangeKind.ADD)
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.path = "/other"  # type: ignore[misc]
        assert dataclasses.replace(c, kind=ChangeKind.DELETE) == Change("/new", ChangeKind.DELETE)
        assert pickle.loads(pickle.dumps(c)) == c
        assert hash(c) == hash(by_hand) and str(c) == "A /new"
    assert sorted([Change("/b", ChangeKind.MODIFY), Change("/a", ChangeKind.DELETE),
                   Change("/a", ChangeKind.ADD)]) == [
        Change("/a", ChangeKind.ADD), Change("/a", ChangeKind.DELETE),
        Change("/b", ChangeKind.MODIFY)]
    assert not isinstance(by_hand, tuple)  # compared with Changes only


def test_change_str_is_dockers_line_for_every_kind() -> None:
    """API.md: ``str(change)`` is ``"C /etc/passwd"``, ``"A …"`` or ``"D …"``; ChangeKind
    is an IntEnum, so a Change made with the plain int prints the same."""
    for kind, letter in ((ChangeKind.MODIFY, "C"), (ChangeKind.ADD, "A"),
                         (ChangeKind.DELETE, "D")):
        assert str(Change("/etc/passwd", kind)) == f"{letter} /etc/passwd"
        by_int = Change("/etc/passwd", int(kind))  # type: ignore[arg-type]
        assert str(by_int) == f"{letter} /etc/passwd" and by_int == Change("/etc/passwd", kind)
