"""Walking trees of any depth: no recursion, few fds, no path past ``PATH_MAX``.

A layer may hold 6,000 nested directories (``mkdir d; cd d`` in a loop inside a
container). A recursive walk dies with RecursionError; a path-string walk with
ENAMETOOLONG (the kernel takes paths of at most 4,096 bytes); a walk holding one fd a
level with EMFILE under the usual 1,024-fd limit. Two tools:

- :class:`ShortPaths` keeps path strings short for code that works by path: a path
  that grows past :data:`LIMIT` is re-rooted at ``/proc/self/fd/N/…``, ``N`` an fd
  opened on one of its ancestors (kept until the walk ends; a walk needs one a
  :data:`LIMIT` bytes of depth).
- :class:`DirStack` is the one walker of a tree by directory fds (no recursion, no path
  strings): the open directories of a depth-first walk, each with the items still to be
  taken from it. Its caller takes a directory's items in order and descends where it
  chooses (:meth:`DirStack.push`), so the walk visits entries in the caller's order with
  each subtree right after its directory's entry (a tar's order). A directory's fd is
  closed as soon as nothing is left to take from it — when its last item leads down, at
  once — so a 6,000-deep chain holds two fds, not one a level.
- :func:`walk_dirs` is the walk for callers that take a directory whole: every directory
  at and below an open one, pre-order, with its fd and entries, never following a symlink
  nor crossing a mount (:func:`open_subdir`). It holds the fds of the directories whose
  subdirectories are still to be walked, not one for every level nor every sibling.
"""

from __future__ import annotations

import errno
import operator
import os
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from aufs._sys.safefs import O_DIR

__all__ = ["LIMIT", "DirStack", "DirStep", "Enter", "ShortPaths", "open_subdir", "walk_dirs"]

#: Longest path string handed to the kernel (PATH_MAX is 4,096, a name up to 255 bytes).
LIMIT = 2048


class ShortPaths:
    """Short spellings of long paths (see the module doc); a context manager that
    closes its anchors. A path it returned is valid until then."""

    def __init__(self) -> None:
        self._anchors: dict[str, int] = {}

    def __call__(self, path: str) -> str:
        """``path`` itself if short, else the same directory entry as
        ``/proc/self/fd/N/rest`` (the last component never followed by the anchor)."""
        while len(path) >= LIMIT:
            cut = path.rfind("/", 1, LIMIT)
            if cut <= 0:
                raise OSError(errno.ENAMETOOLONG, "File name too long", path[:64] + "…")
            head, rest = path[:cut], path[cut + 1:]
            fd = self._anchors.get(head)
            if fd is None:
                fd = os.open(head, O_DIR)
                self._anchors[head] = fd
            path = f"/proc/self/fd/{fd}/{rest}"
        return path

    def close(self) -> None:
        anchors, self._anchors = self._anchors, {}
        for fd in anchors.values():
            os.close(fd)

    def __enter__(self) -> ShortPaths:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


R = TypeVar("R")  # how the caller names a directory of the walk (its path below the root)
T = TypeVar("T")  # what the caller takes from a directory (its entries, or those to enter)

_left = operator.length_hint  # items left in a list iterator: exact


class DirStack(Generic[R, T]):
    """The open directories of a depth-first walk below ``root_fd`` (the owner's: never
    closed here), each as ``(fd, rel, items)``: ``items`` an iterator over a list.

    Iterating yields the deepest directory; its caller takes items from it in order
    until one leads down — it opens that directory, pushes it (:meth:`push`) and stops
    taking (``break``) — or until none is left. A directory whose items are all taken is
    dropped and its fd closed (``on_drop(rel)``, if given, is told: what the caller
    opened for it goes too); one left with items is yielded again. :meth:`close` (also
    on an exception) closes every fd still open.
    """

    __slots__ = ("_on_drop", "_root_fd", "_stack")

    def __init__(self, root_fd: int, rel: R, items: list[T],
                 on_drop: Callable[[R], None] | None = None) -> None:
        self._root_fd = root_fd
        self._stack: list[tuple[int, R, Iterator[T]]] = [(root_fd, rel, iter(items))]
        self._on_drop = on_drop

    def push(self, fd: int, rel: R, items: list[T]) -> None:
        """Descend into the directory open as ``fd`` (now owned by the walk). Its parent
        is closed at once if nothing is left to take from it."""
        stack = self._stack
        if stack and not _left(stack[-1][2]):
            self._drop()
        stack.append((fd, rel, iter(items)))

    def _drop(self) -> None:
        fd, rel, _ = self._stack.pop()
        if fd != self._root_fd:
            os.close(fd)
        if self._on_drop is not None:
            self._on_drop(rel)

    def __iter__(self) -> Iterator[tuple[int, R, Iterator[T]]]:
        stack = self._stack
        while stack:
            top = stack[-1]
            yield top
            if stack and stack[-1] is top and not _left(top[2]):
                self._drop()

    def close(self) -> None:
        while self._stack:
            self._drop()


def open_subdir(dir_fd: int, name: str, dev: int) -> int | None:
    """The directory ``name`` in ``dir_fd``, opened without following it; None if it is
    no longer there, no longer a directory (moved, removed, replaced by a symlink
    meanwhile) or on another filesystem than ``dev`` (a mount point: not part of the
    tree)."""
    try:
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return None
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        return None
    return fd


Enter = Callable[["os.DirEntry[str]"], bool]
DirStep = tuple[int, str, list["os.DirEntry[str]"]]


def _list(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:
        return list(it)


def _to_enter(entries: list[os.DirEntry[str]], enter: Enter | None) -> list[str]:
    return [e.name for e in entries
            if e.is_dir(follow_symlinks=False) and (enter is None or enter(e))]


def walk_dirs(root: int | str, enter: Enter | None = None) -> Iterator[DirStep]:
    """Each directory at and below ``root`` (an open directory, the owner's, or a path
    opened without following it): its open fd, its path below the root (``""`` for the
    root) and its entries, pre-order. Never follows a symlink, never crosses into another
    filesystem, enters a subdirectory only if ``enter(entry)`` (default: all). Which
    subdirectories to enter is decided once the caller is done with a directory: what it
    removes or moves away meanwhile is skipped. A yielded fd is valid until the next
    step."""
    if isinstance(root, str):
        fd = os.open(root, O_DIR)
        try:
            yield from walk_dirs(fd, enter)
        finally:
            os.close(fd)
        return
    dev = os.fstat(root).st_dev
    entries = _list(root)
    yield root, "", entries
    walk: DirStack[str, str] = DirStack(root, "", _to_enter(entries, enter))
    try:
        for fd, rel, names in walk:
            for name in names:
                sub = open_subdir(fd, name, dev)
                if sub is None:
                    continue
                sub_rel = f"{rel}/{name}" if rel else name
                try:
                    entries = _list(sub)
                    yield sub, sub_rel, entries
                    below = _to_enter(entries, enter)
                except BaseException:
                    os.close(sub)
                    raise
                walk.push(sub, sub_rel, below)
                break
    finally:
        walk.close()
