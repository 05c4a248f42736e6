"""``/proc/self/mountinfo`` parsing (proc(5)) from fixture strings, and the few queries on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from aufs._sys import mountinfo
from aufs._sys.mountinfo import (
    MountEntry,
    parse,
    parse_line,
    self_bind_at,
    top_at,
    under,
    unescape,
)


def test_the_proc5_example() -> None:
    e = parse_line("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root "
                   "rw,errors=continue\n")
    assert e == MountEntry(mount_id=36, parent_id=35, major_minor="98:0", root="/mnt1",
                           mountpoint="/mnt2", options="rw,noatime", optional=("master:1",),
                           fstype="ext3", source="/dev/root", super_options="rw,errors=continue")


@pytest.mark.parametrize(
    ("optional", "expected"),
    [("", ()), ("shared:5 ", ("shared:5",)),
     ("shared:5 master:2 propagate_from:1 unbindable ",
      ("shared:5", "master:2", "propagate_from:1", "unbindable"))],
)
def test_optional_fields(optional: str, expected: tuple[str, ...]) -> None:
    e = parse_line(f"100 29 0:60 / /var/lib/aufs/mnt/abc rw,relatime {optional}- overlay overlay "
                   "rw,lowerdir=/a:/b,upperdir=/u,workdir=/w")
    assert e.optional == expected
    assert (e.fstype, e.source) == ("overlay", "overlay")
    assert e.super_options == "rw,lowerdir=/a:/b,upperdir=/u,workdir=/w"


@pytest.mark.parametrize(
    ("field", "path"),
    [("/a\\040b", "/a b"), ("/a\\011b", "/a\tb"), ("/a\\012b", "/a\nb"),
     ("/a\\134b", "/a\\b"), ("/a\\134040", "/a\\040"), ("/x\\040-\\040y", "/x - y"),
     ("/plain", "/plain"), ("/caf\xc3\xa9", "/café")],  # raw UTF-8 read as latin-1
)
def test_octal_escapes(field: str, path: str) -> None:
    assert unescape(field) == path
    e = parse_line(f"7 1 0:5 {field} {field} rw - tmpfs {field} rw")
    assert (e.root, e.mountpoint, e.source) == (path, path, path)
    assert e.fstype == "tmpfs"


def test_an_escaped_dash_is_no_separator() -> None:
    e = parse_line("7 1 0:5 / /m\\040-\\040n rw shared:1 - fuse.fuse-overlayfs fuse-overlayfs "
                   "rw,user_id=0,group_id=0")
    assert e.mountpoint == "/m - n" and e.optional == ("shared:1",)
    assert e.fstype == "fuse.fuse-overlayfs"


def test_missing_super_options() -> None:
    assert parse_line("7 1 0:5 / /m rw - tmpfs none").super_options == ""


def test_parse_many_lines_skips_blanks() -> None:
    text = ("1 0 0:1 / / rw - ext4 /dev/vda rw\n\n"
            "2 1 0:2 / /proc rw,nosuid - proc proc rw\n")
    assert [e.mountpoint for e in parse(text)] == ["/", "/proc"]


def _entry(mount_id: int, parent: int, dev: str, root: str, mountpoint: str,
           fstype: str = "ext4") -> MountEntry:
    return MountEntry(mount_id, parent, dev, root, mountpoint, "rw", (), fstype, "src", "rw")


ENTRIES = [
    _entry(1, 0, "254:0", "/", "/"),
    _entry(2, 1, "0:30", "/", "/tmp", "tmpfs"),
    _entry(3, 2, "0:30", "/s", "/tmp/s", "tmpfs"),        # /tmp/s bound onto itself
    _entry(4, 3, "0:61", "/", "/tmp/s/mnt/a", "overlay"),
    _entry(5, 1, "254:0", "/var/x", "/var/y"),             # another dir bound here
    _entry(6, 1, "0:70", "/", "/var/lib/aufs", "tmpfs"),   # a filesystem of its own
    _entry(7, 2, "0:30", "/sub/dir", "/tmp/sub/dir"),
    _entry(8, 1, "254:0", "/srv/store", "/srv/store"),
    _entry(9, 8, "254:0", "/srv/store", "/srv/store"),     # bound twice: the top one
]


def test_under_is_by_path_component() -> None:
    assert [e.mount_id for e in under(ENTRIES, "/tmp/s")] == [3, 4]
    assert [e.mount_id for e in under(ENTRIES, "/tmp/s/")] == [3, 4]
    assert [e.mount_id for e in under(ENTRIES, "/tmp/s/mnt")] == [4]
    assert [e.mount_id for e in under(ENTRIES, "/tm")] == []
    assert [e.mount_id for e in under(ENTRIES, "/tmp")] == [2, 3, 4, 7]


@pytest.mark.parametrize(
    ("path", "mount_id"),
    [("/tmp/s", 3), ("/tmp/s/", 3), ("/tmp/sub/dir", 7), ("/srv/store", 9),
     ("/var/y", None), ("/var/lib/aufs", None), ("/tmp", None), ("/", None),
     ("/tmp/s/mnt/a", None), ("/nowhere", None)],
)
def test_self_bind_at(path: str, mount_id: int | None) -> None:
    found = self_bind_at(ENTRIES, path)
    assert (found.mount_id if found else None) == mount_id


@pytest.mark.parametrize(
    ("path", "mount_id"),
    [("/srv/store", 9), ("/tmp/s", 3), ("/tmp/s/mnt/a", 4), ("/", 1), ("/tmp/s/mnt", None),
     ("/nowhere", None)],
)
def test_top_at_is_the_mount_on_top(path: str, mount_id: int | None) -> None:
    """The last listed at the path: a stack is listed bottom first, and umount2 removes
    the top one (here /srv/store bound twice: 9 over 8)."""
    found = top_at(ENTRIES, path)
    assert (found.mount_id if found else None) == mount_id


def test_reading_this_process_mount_table(tmp_path: Path) -> None:
    entries = mountinfo.read()
    assert any(e.mountpoint == "/" for e in entries)
    assert mountinfo.is_mountpoint("/")
    assert not mountinfo.is_mountpoint(str(tmp_path))
    assert list(mountinfo.mounts_under(str(tmp_path))) == []
