"""The store lock: ``flock`` on ``.aufs/lock``, re-entrant within a thread.

Every open takes its own file description, so threads of one process exclude each
other exactly as processes do. ``cleanup`` of a store we did not create removes
``.aufs/`` (the lock file too, while holding it): a waiter that then gets the lock of
the unlinked file sees that the path no longer names it, and locks anew, making the
directory (and ``dirs``) again.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StoreLock:
    def __init__(self, path: str, dirs: tuple[str, ...] = ()) -> None:
        self.path = path
        self.dirs = dirs  # made again, with the lock's directory, if that was removed
        self._local = threading.local()

    @contextmanager
    def hold(self) -> Iterator[None]:
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        fd = self._lock()
        try:
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
        finally:
            os.close(fd)  # closing drops the flock

    def _lock(self) -> int:
        """An fd holding the flock of the file the path names now."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # the directory was removed: make it again
                os.makedirs(os.path.dirname(self.path), 0o755, exist_ok=True)
                for d in self.dirs:
                    os.makedirs(d, 0o755, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    now = None
                if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a lock of a file unlinked meanwhile: no lock at all
