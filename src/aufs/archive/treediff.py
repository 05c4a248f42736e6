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
from typing import TYPE_CHECKING

from aufs._sys import deep, safefs
from aufs._sys.files import list_xattrs
from aufs.archive.types import ChangeKind
from aufs.whiteout import WH_META_PREFIX

if TYPE_CHECKING:
    from aufs.archive.change import Change

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


def _scan(fd: int) -> dict[str, os.DirEntry[str]]:
    with os.scandir(fd) as it:
        return {e.name: e for e in it if not e.name.startswith(WH_META_PREFIX)}


class _Spell:
    """A name in a directory of the walk as a path, for calls that take no ``dir_fd``
    (xattrs): below the tree's root while that is short (a path walk costs less than
    ``/proc/self/fd``'s), else through the directory's fd."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def __call__(self, dir_fd: int, path: str) -> str:
        full = self.root + path
        if len(full) < deep.LIMIT:
            return full
        return safefs.proc_path(dir_fd, path.rpartition("/")[2])


# A directory of the walk: its path below the roots and its fd in the old tree (-1: none).
_Rel = tuple[str, int]
# A subdirectory to enter: its name, and whether the old tree has a directory there.
_Sub = tuple[str, bool]


def changes_dirs(new_dir: str, old_dir: str | None) -> list[Change]:
    """What changed from the tree ``old_dir`` to the tree ``new_dir``, sorted by path.

    ``old_dir`` None (or "") compares against an empty tree: everything is ``ADD``. The
    walk is the one walker's (:class:`aufs._sys.deep.DirStack`) over the new tree, each
    directory's old counterpart opened from its parent's: no symlink is followed below
    the roots and neither tree's mounts are entered.
    """
    out: list[tuple[str, ChangeKind]] = []
    new_root = os.open(new_dir, safefs.O_ROOT)
    old_root = -1
    try:
        if old_dir:
            old_root = os.open(old_dir, safefs.O_ROOT)
        _walk(new_root, old_root, (_Spell(new_dir), _Spell(old_dir or "")), out)
    finally:
        os.close(new_root)
        if old_root >= 0:
            os.close(old_root)
    _add_parents(out)
    out.sort()
    from aufs.archive.change import Change  # not for same_fs_time (aufs ls)

    return [Change(path, kind) for path, kind in out]


def _walk(new_root: int, old_root: int, spell: tuple[_Spell, _Spell],
          out: list[tuple[str, ChangeKind]]) -> None:
    """Compare every directory of the new tree with its old counterpart (the roots
    stay open: the caller's)."""
    def drop(rel: _Rel) -> None:
        if rel[1] not in (-1, old_root):
            os.close(rel[1])

    new_dev = os.fstat(new_root).st_dev
    old_dev = os.fstat(old_root).st_dev if old_root >= 0 else -1
    walk: deep.DirStack[_Rel, _Sub] = deep.DirStack(
        new_root, ("", old_root), _compare(new_root, old_root, "", out, spell), drop)
    try:
        for fd, (rel, old_fd), subs in walk:
            for name, old_has in subs:
                sub = deep.open_subdir(fd, name, new_dev)
                if sub is None:
                    continue
                sub_rel = f"{rel}/{name}"
                old_sub: int | None = None
                try:
                    if old_has:
                        old_sub = deep.open_subdir(old_fd, name, old_dev)
                    if old_sub is None:
                        old_sub = -1
                    below = _compare(sub, old_sub, sub_rel, out, spell)
                except BaseException:
                    os.close(sub)
                    if old_sub is not None:
                        drop((sub_rel, old_sub))
                    raise
                walk.push(sub, (sub_rel, old_sub), below)
                break
    finally:
        walk.close()


def _compare(new_fd: int, old_fd: int, rel: str, out: list[tuple[str, ChangeKind]],
             spell: tuple[_Spell, _Spell]) -> list[_Sub]:
    """Compare one directory of each tree (``old_fd`` -1: none): its changes go to
    ``out``; returns the subdirectories to walk."""
    append = out.append
    new_entries = _scan(new_fd)
    old_entries = _scan(old_fd) if old_fd >= 0 else {}
    same_dev = old_fd >= 0 and os.fstat(new_fd).st_dev == os.fstat(old_fd).st_dev
    subs: list[_Sub] = []
    for name, ne in new_entries.items():
        oe = old_entries.pop(name, None)
        if oe is not None and same_dev and ne.inode() == oe.inode():
            continue
        path = rel + "/" + name
        nst = ne.stat(follow_symlinks=False)
        old_is_dir = False
        if oe is None:
            append((path, ChangeKind.ADD))
        else:
            ost = oe.stat(follow_symlinks=False)
            if _stat_different(ost, nst) or (
                    stat.S_ISREG(nst.st_mode)
                    and _capability(spell[0](new_fd, path))
                    != _capability(spell[1](old_fd, path))):
                append((path, ChangeKind.MODIFY))
            old_is_dir = stat.S_ISDIR(ost.st_mode)
        if stat.S_ISDIR(nst.st_mode):
            subs.append((name, old_is_dir))
    for name in old_entries:
        append((rel + "/" + name, ChangeKind.DELETE))
    return subs


def _add_parents(out: list[tuple[str, ChangeKind]]) -> None:
    """A directory with any change below it is a ``MODIFY`` too (Docker's ``addChanges``;
    one not listed is in both trees and unchanged itself), the root excepted."""
    listed = {path for path, _ in out}
    for path, _ in list(out):
        parent = path.rpartition("/")[0]
        while parent and parent not in listed:
            listed.add(parent)
            out.append((parent, ChangeKind.MODIFY))
            parent = parent.rpartition("/")[0]


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
