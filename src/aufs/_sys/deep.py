"""Walking trees of any depth: no recursion, few fds, no path past ``PATH_MAX``.

A layer may hold 6,000 nested directories (``mkdir d; cd d`` in a loop inside a
container). A recursive walk dies with RecursionError; a path-string walk with
ENAMETOOLONG (the kernel takes paths of at most 4,096 bytes); a walk holding one fd a
level with EMFILE under the usual 1,024-fd limit. Two tools:

- :class:`ShortPaths` keeps path strings short for code that works by path: a path
  that grows past :data:`LIMIT` is re-rooted at ``/proc/self/fd/N/…``, ``N`` an fd
  opened on one of its ancestors (kept until the walk ends; a walk needs one a
  :data:`LIMIT` bytes of depth).
- :func:`walk_dirs` yields every directory below an open one, pre-order, opening each
  from its parent's fd when its turn comes: it holds the fds of the directories whose
  subdirectories are still to be walked, not one for every level nor every sibling.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

__all__ = ["LIMIT", "ShortPaths", "walk_dirs"]

#: Longest path string handed to the kernel (PATH_MAX is 4,096, a name up to 255 bytes).
LIMIT = 2048

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
                fd = os.open(head, _O_DIR)
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


class _Dir:
    """An open directory of the walk, closed when its subdirectories are all taken."""

    __slots__ = ("fd", "pending", "rel")

    def __init__(self, fd: int, rel: str) -> None:
        self.fd = fd
        self.rel = rel
        self.pending = 0


Enter = Callable[["os.DirEntry[str]"], bool]


def walk_dirs(root_fd: int, enter: Enter | None = None,
              ) -> Iterator[tuple[int, str, list[os.DirEntry[str]]]]:
    """Each directory at and below ``root_fd``: its open fd, its path below the root
    (``""`` for the root) and its entries, pre-order. Never follows a symlink, never
    crosses into another filesystem, enters a subdirectory only if ``enter(entry)``
    (default: all). The entries are listed before the caller sees them; what the caller
    removes or moves away meanwhile is skipped. ``root_fd`` stays open (its owner's)."""
    dev = os.fstat(root_fd).st_dev
    todo: list[tuple[_Dir, str]] = []
    opened: list[_Dir] = []

    def visit(d: _Dir) -> Iterator[tuple[int, str, list[os.DirEntry[str]]]]:
        with os.scandir(d.fd) as it:
            entries = list(it)
        yield d.fd, d.rel, entries
        for e in reversed(entries):
            if e.is_dir(follow_symlinks=False) and (enter is None or enter(e)):
                todo.append((d, e.name))
                d.pending += 1

    def release(d: _Dir) -> None:
        if d.pending == 0 and d.fd != root_fd and d.fd >= 0:
            os.close(d.fd)
            d.fd = -1

    try:
        yield from visit(_Dir(root_fd, ""))
        while todo:
            parent, name = todo.pop()
            try:
                fd = os.open(name, _O_DIR, dir_fd=parent.fd)
            except (FileNotFoundError, NotADirectoryError):
                fd = -1  # moved or removed meanwhile
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # replaced by a symlink meanwhile
                    raise
                fd = -1
            parent.pending -= 1
            release(parent)
            if fd < 0:
                continue
            d = _Dir(fd, f"{parent.rel}/{name}" if parent.rel else name)
            opened.append(d)
            if os.fstat(fd).st_dev != dev:  # a mount point: not part of the tree
                release(d)
                continue
            yield from visit(d)
            release(d)
            if len(opened) > 256:
                opened = [o for o in opened if o.fd >= 0]
    finally:
        for d in opened:
            if d.fd >= 0:
                os.close(d.fd)
