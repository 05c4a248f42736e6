"""Open directories below an extraction's root, by cleaned path: the extractor's cache.

Each is reached from its parent's fd one component at a time with ``O_NOFOLLOW |
O_DIRECTORY`` (:mod:`aufs._sys.safefs`), so a symlink on the way — already in the tree or
just made by the archive — is never followed: :class:`BreakoutError`. A directory that
is missing is made (mode 0755, its metadata comes later from its own entry, if any).
The cache is bounded by the fd limit: past it, every fd is closed and reopened on demand.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aufs._sys import safefs
from aufs._sys.files import fd_budget
from aufs.errors import ArchiveError, BreakoutError

__all__ = ["DirFds"]


class DirFds:
    """fds of directories below ``root_fd``; ``made(path, replaced)`` hears of each one
    created, ``making(path)`` (if given) of each one about to be. ``in_the_way(parent_fd,
    path, name)`` (if given) is asked about a non-directory where a directory is wanted:
    True if it removed it (an overlay whiteout), and the directory is then made there
    (``replaced``)."""

    def __init__(self, root_fd: int, made: Callable[[str, bool], None],
                 making: Callable[[str], None] | None = None,
                 in_the_way: Callable[[int, str, str], bool] | None = None) -> None:
        self.root_fd = root_fd
        self._made = made
        self._making = making  # hears of a directory about to be made
        self._in_the_way = in_the_way
        self._fds: dict[str, int] = {}
        self._limit = fd_budget(4, 256, 8)

    def get(self, path: str) -> int:
        """fd of the directory ``path`` (cleaned; "" = root), made if missing, never
        reached through a symlink. Owned by the cache."""
        if not path:
            return self.root_fd
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        head, _, tail = path.rpartition("/")
        parent = self.get(head)
        try:
            try:
                fd = safefs.open_dir_at(parent, tail)
            except FileNotFoundError:
                return self._make(parent, path, tail, False)
            except safefs.NotADirectoryInPathError:
                if self._in_the_way is None or not self._in_the_way(parent, path, tail):
                    raise
                return self._make(parent, path, tail, True)
        except safefs.SymlinkInPathError:
            raise BreakoutError(f"{path!r} is a symlink: extraction never follows one") from None
        except safefs.NotADirectoryInPathError:
            raise ArchiveError(f"{path!r} is not a directory") from None
        self._fds[path] = fd
        return fd

    def _make(self, parent: int, path: str, name: str, replaced: bool) -> int:
        """Make the missing directory; a symlink made meanwhile is refused too. Cached
        before ``made`` hears of it, which may ask for it again."""
        if self._making is not None:
            self._making(path)
        fd = safefs.open_dir_at(parent, name, create=0o755)
        self._fds[path] = fd
        self._made(path, replaced)
        return fd

    def lookup(self, path: str) -> int:
        """A new fd of the existing directory ``path`` (never made, never through a
        symlink); the caller closes it."""
        fd = self._fds.get(path)
        if fd is not None:
            return os.dup(fd)
        if not path or path == ".":
            return os.dup(self.root_fd)
        return safefs.open_beneath(self.root_fd, path)

    def forget(self, path: str) -> None:
        """``path`` is going away: close its fd and those of the directories below it."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)
            prefix = path + "/"
            for key in [k for k in self._fds if k.startswith(prefix)]:
                os.close(self._fds.pop(key))

    def trim(self) -> None:
        """Between entries: keep the number of open fds under the limit."""
        if len(self._fds) >= self._limit:
            self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
