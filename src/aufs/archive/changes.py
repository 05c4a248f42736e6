"""Change detection on a layer's own directory, against its parents' directories.

Docker's ``archive.Changes(layers, rw)`` (used by its aufs driver), reading diff
directories only, so a layer gives the same answer mounted or not:

- a whiteout in ``rw`` (``.wh.<name>`` file or overlay 0:0 char device): ``DELETE``;
- a path in ``rw`` that the parents' union shows: ``MODIFY`` — except a directory whose
  size, mode and mtime equal the parent's (mtimes compared with Docker's ``sameFsTime``
  tolerance for times truncated to seconds by tar), which is not listed;
- any other path in ``rw``: ``ADD``;
- a directory with a child added or deleted is listed as ``MODIFY`` (Docker's rule, so
  its metadata travels in the layer);
- AUFS housekeeping (``.wh..wh.*``) is never a change.

Where Docker only asks "does the path exist in some lower directory", we ask what the
parents' union shows: a path whited out or hidden under an opaque directory in a nearer
parent does not count as existing below it. An opaque directory in ``rw`` (either
format) replaces what the parents showed in it: a name it still has is ``MODIFY`` (or
``ADD`` if new), each name it lacks is a ``DELETE`` — as comparing the two mounted trees
would say. That holds for the layer's root too: an opaque root hides every parent (the
driver mounts no parent below it), and so does a parent's opaque root for the parents
below that one.

Also here: :func:`diff_size`. The naive (mount both trees) variants for a parent that is
not the direct one are in :mod:`aufs.graphdriver.naive`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from operator import attrgetter

from aufs._sys import deep, safefs
from aufs.archive.treediff import changes_dirs, changes_size, same_fs_time
from aufs.archive.types import Change, ChangeKind
from aufs.whiteout import (
    WH_OPAQUE,
    WH_PREFIX,
    Kind,
    classify_entry,
    has_opaque_xattr,
    is_opaque_path,
    is_overlay_whiteout_mode,
)

__all__ = [
    "changes_dirs",
    "changes_size",
    "diff_size",
    "layer_changes",
    "same_fs_time",
]

_MODIFY = ChangeKind.MODIFY
_ADD = ChangeKind.ADD
_DELETE = ChangeKind.DELETE
_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_new_change = object.__new__
_set_path = Change.__dict__["path"].__set__  # the slots' own descriptors
_set_kind = Change.__dict__["kind"].__set__
_PATH = attrgetter("path")
_KIND = attrgetter("kind")


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _lookup(lows: list[str], name: str, want_dirs: bool) -> tuple[os.stat_result | None,
                                                                  list[str]]:
    """What the union of ``lows`` (directories, nearest first) shows at ``name``.

    Returns the stat of the visible file (None if there is none) and, if ``want_dirs``
    and it is a directory, the lower directories that make up its content.
    One ``lstat`` per lower directory until the name is found; AUFS whiteouts are
    looked for only in the directories above a hit, where they could hide it.
    """
    lstat = os.lstat
    for i, low in enumerate(lows):
        path = low + "/" + name
        try:
            st = lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        fmt = st.st_mode & _S_IFMT
        if is_overlay_whiteout_mode(st.st_mode, st.st_rdev):
            return None, []  # overlay whiteout
        for upper in lows[:i]:
            if _exists(upper + "/" + WH_PREFIX + name):
                return None, []  # whited out above: nothing below shows through
        if fmt != _S_IFDIR or not want_dirs:
            return st, []
        dirs = [path]
        rest = lows[i + 1:]
        if not rest or is_opaque_path(path):
            return st, dirs
        for k, low2 in enumerate(rest, 1):
            path2 = low2 + "/" + name
            try:
                st2 = lstat(path2)
            except (FileNotFoundError, NotADirectoryError):
                if _exists(low2 + "/" + WH_PREFIX + name):
                    break
                continue
            if st2.st_mode & _S_IFMT != _S_IFDIR:
                break  # a whiteout or a file: it and what is below are hidden
            dirs.append(path2)
            if k == len(rest) or is_opaque_path(path2):
                break
        return st, dirs
    return None, []


def _union_names(lows: list[str]) -> set[str]:
    """Names the union of ``lows`` shows in one directory (whiteouts applied)."""
    visible: set[str] = set()
    hidden: set[str] = set()
    for low in lows:
        with os.scandir(low) as it:
            for e in it:
                entry = classify_entry(e)
                if entry.kind is Kind.PLAIN:
                    if e.name not in hidden:
                        visible.add(e.name)
                elif entry.kind is Kind.WHITEOUT and entry.target not in visible:
                    hidden.add(entry.target)
    return visible


def _root_lows(lower_dirs: Sequence[str]) -> list[str]:
    lows: list[str] = []
    for i, low in enumerate(lower_dirs):
        if not os.path.isdir(low):
            continue
        lows.append(low.rstrip("/") or "/")
        if i < len(lower_dirs) - 1 and is_opaque_path(low):
            break
    return lows


def layer_changes(lower_dirs: Sequence[str], rw_dir: str) -> list[Change]:
    """Changes of the layer directory ``rw_dir`` over ``lower_dirs`` (nearest first).

    Each directory of ``rw_dir`` is opened once and read through that fd (its listing,
    its own stat, its xattrs): a ``stat`` by path costs a path walk and a result object
    each, which on a small upper layer is most of the time.
    """
    out: list[Change] = []
    keep = out.append

    def append(item: tuple[str, ChangeKind]) -> None:
        keep(_change(*item))  # the tuple goes at once: no (path, kind) beside each Change

    lookup = _lookup
    lstat = os.lstat
    fstat = os.fstat
    # frames: (directory in rw, its change path or "", lower dirs it shows, the
    # parents' stat of it if they show a directory there (compared here), listed?,
    # hides the lower directories? — it or a parent is opaque)
    stack: list[tuple[str, str, list[str], os.stat_result | None, bool, bool]] = [
        (rw_dir.rstrip("/") or "/", "", _root_lows(lower_dirs), None, True, False)]
    with deep.ShortPaths() as short:
        while stack:
            _changes_of_dir(stack, short, append, lookup, lstat, fstat)
    # By (path, kind) as two stable sorts whose keys are the Changes' own fields: no key
    # tuples — a layer of 200,000 files stays under 64 MiB.
    out.sort(key=_KIND)
    out.sort(key=_PATH)
    return out


_Frame = tuple[str, str, list[str], "os.stat_result | None", bool, bool]


def _changes_of_dir(stack: list[_Frame], short: deep.ShortPaths,
                    append: Callable[[tuple[str, ChangeKind]], None],
                    lookup: Callable[[list[str], str, bool],
                                     tuple[os.stat_result | None, list[str]]],
                    lstat: Callable[[str], os.stat_result],
                    fstat: Callable[[int], os.stat_result]) -> None:
    """One directory of :func:`layer_changes`; its subdirectories go on ``stack``."""
    rw_path, rel, lows, below, listed, hides = stack.pop()
    if len(rw_path) >= deep.LIMIT or any(len(low) >= deep.LIMIT for low in lows):
        rw_path, lows = short(rw_path), [short(low) for low in lows]
    # The layer's own directory may be a symlink (a layer migrated in place).
    fd = os.open(rw_path, safefs.O_DIR if rel else safefs.O_ROOT)
    try:
        if below is not None:
            st = fstat(fd)
            listed = not (st.st_size == below.st_size and st.st_mode == below.st_mode
                          and same_fs_time(st.st_mtime_ns, below.st_mtime_ns))
            if listed:
                append((rel, _MODIFY))
        single = lows[0] if len(lows) == 1 else None
        parent_changed = False
        aufs_opaque = False
        subdirs: list[tuple[str, str, list[str], os.stat_result | None, bool]] = []
        # Names only, no DirEntry kept: a directory of 200,000 files is listed whole.
        names: list[str] = []
        whited: list[str] = []
        with os.scandir(fd) as it:
            for e in it:
                name = e.name
                names.append(name)
                if name.startswith(WH_PREFIX):
                    if name == WH_OPAQUE:
                        aufs_opaque = True
                        continue
                    wh = classify_entry(e)
                    if wh.kind is Kind.WHITEOUT:
                        append((rel + "/" + wh.target, _DELETE))
                        whited.append(wh.target)
                        parent_changed = True
                    continue  # housekeeping
                path = rel + "/" + name
                if e.is_dir(follow_symlinks=False):
                    found, sub_lows = lookup(lows, name, True) if lows else (None, [])
                    if found is None:
                        append((path, _ADD))
                        parent_changed = True
                    elif found.st_mode & _S_IFMT != _S_IFDIR:
                        append((path, _MODIFY))
                    else:  # compared with this directory's own stat in its frame
                        subdirs.append((rw_path + "/" + name, path, sub_lows, found, False))
                        continue
                    subdirs.append((rw_path + "/" + name, path, sub_lows, None, True))
                    continue
                if not e.is_file(follow_symlinks=False) and not e.is_symlink():
                    st = e.stat(follow_symlinks=False)
                    if is_overlay_whiteout_mode(st.st_mode, st.st_rdev):
                        append((path, _DELETE))  # overlay whiteout
                        parent_changed = True
                        continue
                if single is not None:  # one parent directory: one lstat, inline
                    try:
                        found = lstat(single + "/" + name)
                    except (FileNotFoundError, NotADirectoryError):
                        found = None
                    else:
                        if is_overlay_whiteout_mode(found.st_mode, found.st_rdev):
                            found = None  # an overlay whiteout
                else:
                    found = lookup(lows, name, False)[0] if lows else None
                if found is not None:
                    append((path, _MODIFY))
                else:
                    append((path, _ADD))
                    parent_changed = True
        if lows and not hides:  # the root too: an opaque root hides every parent
            hides = aufs_opaque or has_opaque_xattr(fd)
        if hides and lows:
            # Only this layer shows here: what the parents showed and it lacks is gone.
            present = {*names, *whited}
            for name in _union_names(lows) - present:
                append((rel + "/" + name, _DELETE))
                parent_changed = True
    finally:
        os.close(fd)
    for frame in subdirs:
        stack.append((*frame, hides))
    if parent_changed and not listed:
        append((rel, _MODIFY))


def _change(path: str, kind: ChangeKind) -> Change:
    """``Change(path, kind)`` without the frozen dataclass's per-field ``__setattr__``."""
    change = _new_change(Change)
    _set_path(change, path)
    _set_kind(change, kind)
    return change


def diff_size(directory: str) -> int:
    """Bytes of the regular files under ``directory``, each hard-linked inode once.

    Whiteouts, opaque markers and AUFS housekeeping count 0, as do directories.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [directory]
    with deep.ShortPaths() as short:
        while stack:
            total += _size_of_dir(short(stack.pop()), stack, seen)
    return total


def _size_of_dir(path: str, stack: list[str], seen: set[tuple[int, int]]) -> int:
    """:func:`diff_size` of one directory's files; its subdirectories go on ``stack``."""
    total = 0
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith(WH_PREFIX):
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_size
    return total

