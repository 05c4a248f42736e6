"""Changes between two plain directory trees (Docker's ``ChangesDirs``) and their size.

This is the naive path: the trees are whole root filesystems (mounted unions), so
there are no whiteouts to read, only two trees to compare:

- a name only in the new tree: ``ADD`` (and everything under it);
- a name only in the old tree: ``DELETE`` (the name alone, not its contents);
- in both: ``MODIFY`` if mode, owner or rdev differ, or — for non-directories — size or
  mtime (Docker's ``sameFsTime`` tolerance), or the ``security.capability`` xattr;
- a directory with any change below it is listed as ``MODIFY`` too.

As in Docker's Linux walker, names with the same inode number on the same device in
both trees are skipped without a ``stat`` (a shared lower file cannot have changed).
AUFS housekeeping names (``.wh..wh.*``) are never compared.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from aufs._sys import deep
from aufs._sys.files import list_xattrs
from aufs.archive.types import Change, ChangeKind
from aufs.whiteout import WH_META_PREFIX

__all__ = ["changes_dirs", "changes_size"]

_NS = 1_000_000_000
_CAP = "security.capability"


def same_fs_time(a_ns: int, b_ns: int) -> bool:
    """Docker's ``sameFsTime``: equal, or the same second with one side truncated."""
    return a_ns == b_ns or (a_ns // _NS == b_ns // _NS and (a_ns % _NS == 0 or b_ns % _NS == 0))


def _stat_different(old: os.stat_result, new: os.stat_result) -> bool:
    """Docker's ``statDifferent`` (unix): sizes and mtimes of directories are ignored."""
    if (old.st_mode != new.st_mode or old.st_uid != new.st_uid or old.st_gid != new.st_gid
            or old.st_rdev != new.st_rdev):
        return True
    if stat.S_ISDIR(old.st_mode):
        return False
    return old.st_size != new.st_size or not same_fs_time(old.st_mtime_ns, new.st_mtime_ns)


def _capability(path: str) -> bytes | None:
    # listxattr first: it answers "none" without raising, which getxattr cannot
    try:
        if _CAP not in list_xattrs(path):
            return None
        return os.getxattr(path, _CAP, follow_symlinks=False)
    except OSError:
        return None


def _scan(path: str) -> dict[str, os.DirEntry[str]]:
    with os.scandir(path) as it:
        return {e.name: e for e in it if not e.name.startswith(WH_META_PREFIX)}


def changes_dirs(new_dir: str, old_dir: str | None) -> list[Change]:
    """What changed from the tree ``old_dir`` to the tree ``new_dir``, sorted by path.

    ``old_dir`` None (or "") compares against an empty tree: everything is ``ADD``.
    """
    out: list[tuple[str, ChangeKind]] = []
    new_dev = os.stat(new_dir).st_dev
    old_dev = os.stat(old_dir).st_dev if old_dir else -1
    # Frames: ("in", new path, old dir path or None, change path, listed?, devs)
    # and ("out", change path, len(out) on entry, listed?): a post-order step.
    stack: list[tuple[bool, str, str | None, str, bool, int, int, int]] = [
        (True, new_dir, old_dir or None, "", True, new_dev, old_dev, 0)]
    with deep.ShortPaths() as short:
        while stack:
            _compare_dir(stack, out, short)
    out.sort()
    return [Change(path, kind) for path, kind in out]


_Frame = tuple[bool, str, "str | None", str, bool, int, int, int]


def _compare_dir(stack: list[_Frame], out: list[tuple[str, ChangeKind]],
                 short: deep.ShortPaths) -> None:
    """One step of :func:`changes_dirs`: compare one directory, or close one."""
    append = out.append
    enter, new_path, old_path, rel, listed, ndev, odev, mark = stack.pop()
    if not enter:
        if len(out) > mark and not listed:
            append((rel, ChangeKind.MODIFY))
        return
    new_path = short(new_path)
    if old_path is not None:
        old_path = short(old_path)
    stack.append((False, "", None, rel, listed, 0, 0, len(out)))
    new_entries = _scan(new_path)
    old_entries = _scan(old_path) if old_path is not None else {}
    same_dev = ndev == odev
    for name, ne in new_entries.items():
        oe = old_entries.pop(name, None)
        if oe is not None and same_dev and ne.inode() == oe.inode():
            continue
        path = rel + "/" + name
        nst = ne.stat(follow_symlinks=False)
        old_child: str | None = None
        child_listed = True
        child_odev = -1
        if oe is None:
            append((path, ChangeKind.ADD))
        else:
            ost = oe.stat(follow_symlinks=False)
            if _stat_different(ost, nst) or (
                    stat.S_ISREG(nst.st_mode)
                    and _capability(ne.path) != _capability(oe.path)):
                append((path, ChangeKind.MODIFY))
            else:
                child_listed = False
            if stat.S_ISDIR(ost.st_mode):
                old_child = oe.path
                child_odev = ost.st_dev
        if stat.S_ISDIR(nst.st_mode):
            stack.append((True, ne.path, old_child, path, child_listed, nst.st_dev,
                          child_odev, 0))
    for name in old_entries:
        append((rel + "/" + name, ChangeKind.DELETE))


def changes_size(new_dir: str, changes: Iterable[Change]) -> int:
    """Bytes of the regular files that ``changes`` add or modify in ``new_dir``,
    each hard-linked inode once (Docker's ``ChangesSize``, regular files only)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    root = new_dir.rstrip("/")
    with deep.ShortPaths() as short:
        for change in changes:
            if change.kind is not ChangeKind.DELETE:
                total += _changed_size(short(root + change.path), seen)
    return total


def _changed_size(path: str, seen: set[tuple[int, int]]) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode):
        return 0
    if st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return 0
        seen.add(key)
    return st.st_size
