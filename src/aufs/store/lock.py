"""The store lock: ``flock`` on ``.aufs/lock``, re-entrant within a thread.

Every open takes its own file description, so threads of one process exclude each
other exactly as processes do. ``cleanup`` of a store we did not create removes
``.aufs/`` (the lock file too, while holding it): a waiter that then gets the lock of
the unlinked file sees that the path no longer names it, and locks anew, making the
directory (and ``dirs``) again.

A wait is never silent: when the lock is not free, :data:`on_wait` is called after
``WAIT_NOTICE`` seconds with a line naming the holder (pid and command line, from
``/proc/locks``) — the CLI prints it. An ``aufs import`` that once took 102 s where
others took 2 s could not say whether it waited for another process; now it does.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aufs._sys import safefs
from aufs.errors import StoreCorruptError

WAIT_NOTICE = 1.0  # seconds of waiting for the lock before on_wait is called
# Called (from a timer thread) with one line when a wait for the lock passes WAIT_NOTICE.
on_wait: Callable[[str], object] | None = None


def holders(path: str) -> list[int]:
    """Pids holding a flock on the file ``path`` (from ``/proc/locks``)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (a waiter's line has "->")
        if "->" not in fields and len(fields) >= 6 and fields[1] == "FLOCK" \
                and fields[5] == want and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return f"pid {pid}"
    return f"pid {pid} ({' '.join(a.decode(errors='replace') for a in argv if a)[:120]})"


def _notice(path: str) -> None:
    hook = on_wait
    if hook is None:
        return
    who = ", ".join(_describe(p) for p in holders(path) if p != os.getpid()) or "another process"
    hook(f"waiting for the store lock {path}, held by {who}")


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
            try:  # the store's own file: no symlink followed, no device opened
                # read-only: flock needs no more, and a store on a read-only
                # filesystem (aufs check of a read-only mount) can still be locked
                fd, st = safefs.open_regular(self.path, os.O_RDONLY, create=True, mode=0o600)
            except FileNotFoundError:  # the directory was removed: make it again
                os.makedirs(os.path.dirname(self.path), 0o755, exist_ok=True)
                for d in self.dirs:
                    os.makedirs(d, 0o755, exist_ok=True)
                continue
            if fd < 0:
                raise StoreCorruptError(f"{self.path}: is {safefs.kind(st.st_mode)}, not the "
                                        f"store's lock file (remove it)")
            try:
                self._flock(fd)
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

    def _flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        timer = threading.Timer(WAIT_NOTICE, _notice, (self.path,)) if on_wait else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            if timer is not None:
                timer.cancel()
