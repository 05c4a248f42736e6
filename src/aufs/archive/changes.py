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
from collections import deque
from collections.abc import Sequence
from itertools import islice, repeat
from operator import attrgetter
from typing import TYPE_CHECKING

from aufs._sys import deep, safefs
from aufs.archive.treediff import changes_dirs, changes_size, same_fs_time
from aufs.archive.types import ChangeKind
from aufs.whiteout import (
    OVERLAY_OPAQUE_XATTR,
    WH_OPAQUE,
    WH_PREFIX,
    Kind,
    classify_entry,
    has_opaque_xattr,
    is_opaque_path,
    is_overlay_whiteout_mode,
    wh_file_target,
)

if TYPE_CHECKING:
    from aufs.archive.change import Change

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
_S_IFCHR = stat.S_IFCHR
_LIMIT = deep.LIMIT
_new_change = object.__new__
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
    """Names the union of ``lows`` (nearest first) shows in one directory: what
    :func:`_lookup` finds there, for every name at once. A name counts from the nearest
    directory that has an entry of that name, unless that entry is an overlay whiteout
    or a nearer directory holds an AUFS whiteout of it."""
    visible: set[str] = set()
    hidden: set[str] = set()
    for low in lows:
        whited: list[str] = []
        with os.scandir(low) as it:
            for e in it:
                name = e.name
                if name in visible or name in hidden:
                    continue  # a nearer directory decided
                entry = classify_entry(e)
                if entry.kind is Kind.PLAIN:
                    visible.add(name)
                elif entry.kind is Kind.WHITEOUT:
                    if entry.target == name:
                        hidden.add(name)  # an overlay whiteout: the name itself
                    else:
                        whited.append(entry.target)  # hides it below this directory
        hidden.update(whited)
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


# When a directory has many names to look up in its parents, listing the parents'
# directory once beats one lookup a name. A lookup (``lstat``) costs about one unit; a
# listing about 3 units plus 0.6 a name (open, getdents, a classification each), and a
# directory of ext4 holds about one name per 32 bytes of its size: the listing costs
# about 3 + size / 53 lookups (with several parents both cost about that many times
# more). A directory looks names up one by one until it has done that many, then lists
# (the ski-rental rule: never more than twice the better of the two). On the bench's
# layer no directory lists (its most, 35 lookups in a parent of 420 names); a layer
# that rewrites most of a large directory does. Tests set SCAN_AFTER to 0 (list at
# once) or None (never list) to check that both give one answer.
SCAN_AFTER: int | None = -1  # -1: from the parent directory's size, as above
_NEVER = 1 << 62


def _scan_budget(below: os.stat_result | None) -> int:
    """Lookups to do in a directory before listing its parents' directories instead."""
    if SCAN_AFTER is None:
        return _NEVER
    if SCAN_AFTER >= 0:
        return SCAN_AFTER
    return 3 + (below.st_size if below is not None else 4096) // 53


# A frame of the walk: (directory in rw, its name, its change path or "" for the root,
# the lower directories it shows, the parents' stat of it if they show a directory there
# (to compare with its own), hides the lower directories — it or a parent is opaque, the
# fd of its parent directory in rw or -1). A frame with an empty first field closes that
# fd: the subtree of its directory is done.
_Frame = tuple[str, str, str, list[str], "os.stat_result | None", bool, int]

# Directories of the walk whose fds stay open while their subdirectories are read, so
# that each opens relative to its parent (``openat``), not by a path the kernel walks
# from the root again; below that many open levels, subdirectories open by path.
HELD = 32


class _Stack(list[_Frame]):
    """The walk's frames; on leaving, closes the fds its closing frames still hold (an
    error ended the walk)."""

    def __enter__(self) -> _Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        for frame in self:
            if not frame[0]:
                os.close(frame[6])


def layer_changes(lower_dirs: Sequence[str], rw_dir: str) -> list[Change]:
    """Changes of the layer directory ``rw_dir`` over ``lower_dirs`` (nearest first).

    Each directory of ``rw_dir`` is opened once, relative to its parent's fd (so never
    through a symlink, even one a running container swaps in), and read through that fd
    (its listing, its own stat, its xattrs): a ``stat`` by path costs a path walk and a
    result object each. Each name is looked up once in the parents (or, :func:`_scan_budget`, the
    parents' directory is listed once), names below a directory the parents lack not at
    all. This is one loop, with no call per entry but those it must make (the entry's
    type, the lookup, the result) and little per directory: on a small upper layer the
    Python around the system calls is most of the time.
    """
    # The paths of each kind, made Changes at the end in C loops (no bytecode a Change).
    modified: list[str] = []
    added: list[str] = []
    deleted: list[str] = []
    mod, add, gone = modified.append, added.append, deleted.append
    lstat, fstat, listxattr, scandir = os.lstat, os.fstat, os.listxattr, os.scandir
    open_dir, close, o_dir = os.open, os.close, safefs.O_DIR
    wh_prefix = WH_PREFIX
    limit = _LIMIT
    by_size = SCAN_AFTER == -1
    root = rw_dir.rstrip("/") or "/"
    held = 0  # closing frames on the stack
    with deep.ShortPaths() as short, _Stack() as stack:
        pop = stack.pop
        push = stack.append
        push((root, "", "", _root_lows(lower_dirs), None, False, -1))
        while stack:
            rw_path, name, rel, lows, below, hides, pfd = pop()
            if not rw_path:  # the subtree of the directory open as pfd is done
                held -= 1
                close(pfd)
                continue
            # lows: [] (the parents show nothing here), one directory, or several
            if len(lows) == 1:
                low = lows[0]
                if len(low) >= limit:
                    low = short(low)
                    lows = [low]
                low += "/"
            else:
                low = ""
                if any(len(path) >= limit for path in lows):
                    lows = [short(path) for path in lows]
            if pfd >= 0:
                fd = open_dir(name, o_dir, dir_fd=pfd)
            else:
                if len(rw_path) >= limit:
                    rw_path = short(rw_path)
                # The layer's own directory may be a symlink (a layer migrated in place).
                fd = open_dir(rw_path, o_dir if rel else safefs.O_ROOT)
            keep = False  # fd stays open for the subdirectories (a closing frame has it)
            try:
                if lows and not hides:  # the root too: an opaque root hides every parent
                    try:
                        maybe = OVERLAY_OPAQUE_XATTR in listxattr(fd)
                    except OSError:
                        maybe = True  # has_opaque_xattr decides
                    hides = maybe and has_opaque_xattr(fd)
                prefix = rel + "/"
                if not lows:
                    budget = 0
                elif by_size:
                    budget = 3 + (below.st_size if below is not None else 4096) // 53
                else:
                    budget = _scan_budget(below)
                visible: set[str] | None = None
                changed = aufs_opaque = False
                dirs: list[str] = []
                whited: list[str] = []  # targets of AUFS whiteouts
                with scandir(fd) as it:
                    for e in it:
                        name = e.name
                        if name[0] == "." and name.startswith(wh_prefix):
                            if name == WH_OPAQUE:
                                aufs_opaque = True
                            else:
                                target = wh_file_target(e)
                                if target is not None:
                                    whited.append(target)
                            continue  # or housekeeping
                        if e.is_dir(follow_symlinks=False):
                            dirs.append(name)
                            continue
                        if not (e.is_file(follow_symlinks=False) or e.is_symlink()):
                            st = e.stat(follow_symlinks=False)  # devices, fifos, sockets
                            if is_overlay_whiteout_mode(st.st_mode, st.st_rdev):
                                gone(prefix + name)
                                changed = True
                                continue
                        # In the parents' union? MODIFY if so, else ADD.
                        if budget and low:
                            budget -= 1
                            try:
                                st = lstat(low + name)
                            except (FileNotFoundError, NotADirectoryError):
                                add(prefix + name)
                                changed = True
                                continue
                            if st.st_mode & _S_IFMT == _S_IFCHR and is_overlay_whiteout_mode(
                                    st.st_mode, st.st_rdev):
                                add(prefix + name)
                                changed = True
                                continue
                        elif budget:
                            budget -= 1
                            if _lookup(lows, name, False)[0] is None:
                                add(prefix + name)
                                changed = True
                                continue
                        elif not lows:
                            add(prefix + name)
                            changed = True
                            continue
                        else:
                            if visible is None:
                                visible = _union_names(lows)
                            if name not in visible:
                                add(prefix + name)
                                changed = True
                                continue
                        mod(prefix + name)
                if aufs_opaque and lows:
                    hides = True
                sub_fd = -1
                if dirs and held < HELD:
                    push(("", "", "", [], None, False, fd))
                    keep = True
                    held += 1
                    sub_fd = fd
                for name in dirs:
                    path = prefix + name
                    sub = rw_path + "/" + name
                    if not lows or (visible is not None and name not in visible):
                        found_st = None
                    elif low:
                        sub_low = low + name
                        try:
                            found_st = lstat(sub_low)
                        except (FileNotFoundError, NotADirectoryError):
                            found_st = None
                        else:
                            fmt = found_st.st_mode & _S_IFMT
                            if fmt == _S_IFDIR:  # compared with the directory in its frame
                                push((sub, name, path, [sub_low], found_st, hides, sub_fd))
                                continue
                            if fmt == _S_IFCHR and is_overlay_whiteout_mode(
                                    found_st.st_mode, found_st.st_rdev):
                                found_st = None
                    else:
                        found_st, sub_lows = _lookup(lows, name, True)
                        if (found_st is not None
                                and found_st.st_mode & _S_IFMT == _S_IFDIR):
                            push((sub, name, path, sub_lows, found_st, hides, sub_fd))
                            continue
                    if found_st is None:
                        add(path)
                        changed = True
                    else:
                        mod(path)  # a directory where the parents show a file
                    push((sub, name, path, [], None, hides, sub_fd))
                if whited:
                    for name in whited:
                        gone(prefix + name)
                    changed = True
                if hides and lows:
                    # Only this layer shows here: what the parents showed and it lacks
                    # is gone.
                    present = {*os.listdir(fd), *whited}
                    for name in _union_names(lows) - present:
                        gone(prefix + name)
                        changed = True
                if below is not None:  # Docker's rule: a child added or deleted lists it
                    if not changed:
                        st = fstat(fd)
                        changed = not (st.st_size == below.st_size
                                       and st.st_mode == below.st_mode
                                       and (st.st_mtime_ns == below.st_mtime_ns
                                            or same_fs_time(st.st_mtime_ns,
                                                            below.st_mtime_ns)))
                    if changed:
                        mod(rel)
            finally:
                if not keep:
                    close(fd)
    # MODIFYs, then ADDs, then DELETEs, sorted by path — the sort is stable, so a path
    # both deleted and changed comes out in (path, kind) order. The key is the Changes'
    # own field: no key tuples — a layer of 200,000 files stays under 64 MiB.
    out: list[Change] = []
    _extend(out, modified, _MODIFY)
    _extend(out, added, _ADD)
    _extend(out, deleted, _DELETE)
    out.sort(key=_PATH)
    return out


def _extend(out: list[Change], paths: list[str], kind: ChangeKind) -> None:
    """``out += [Change(path, kind) for path in paths]`` in C loops, without the frozen
    dataclass's per-field ``__setattr__``; ``paths`` is emptied."""
    from aufs.archive.change import Change  # not for diff_size (aufs ls)

    start = len(out)
    out.extend(map(_new_change, repeat(Change, len(paths))))
    set_path = Change.__dict__["path"].__set__  # the slots' own descriptors
    set_kind = Change.__dict__["kind"].__set__
    deque(map(set_path, islice(out, start, None), paths), 0)
    deque(map(set_kind, islice(out, start, None), repeat(kind)), 0)
    paths.clear()


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

