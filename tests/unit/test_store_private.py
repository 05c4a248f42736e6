"""``.aufs/`` of a store we did not create: what cleanup may remove, and a lock that
survives the removal of its file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from aufs.store.lock import StoreLock
from aufs.store.private import is_transient

OPEN = {"lock", "refs", "work", "staging", "l"}


@pytest.mark.parametrize(("names", "counts", "busy", "transient"), [
    (OPEN, {}, set(), True),
    (OPEN, {"a": 0, "b": 0}, set(), True),        # counts kept at zero by put
    ({"lock", "refs"}, {}, set(), True),          # an older open made fewer
    (OPEN, {"a": 1}, set(), False),               # a layer still held
    (OPEN, {}, {"staging"}, False),               # an apply under way
    (OPEN, {}, {"l"}, False),                     # overlay short links: a store of ours
    (OPEN | {"store.json"}, {}, set(), False),    # our own store
    (OPEN | {"names.json"}, {}, set(), False),    # names the user gave
    (OPEN | {"images"}, {}, set(), False),
    (OPEN | {"convert.json"}, {}, set(), False),  # a conversion under way
])
def test_is_transient(names: set[str], counts: dict[str, int], busy: set[str],
                      transient: bool) -> None:
    assert is_transient(names, counts, busy) is transient


def test_a_waiter_locks_anew_when_the_lock_file_was_removed(tmp_path: Path) -> None:
    private = tmp_path / ".aufs"
    private.mkdir()
    path = str(private / "lock")
    holder, waiter = StoreLock(path), StoreLock(path, (str(private / "refs"),))
    got: list[bool] = []
    waiting = threading.Event()

    def wait() -> None:
        waiting.set()
        with waiter.hold():
            held = os.stat(path)  # the file this waiter locked is the path's file
            got.append(os.path.isdir(private / "refs") and held.st_nlink == 1)
            # … and another locker waits for it: it is a real lock
            got.append(not _try_lock(path))

    with holder.hold():
        t = threading.Thread(target=wait)
        t.start()
        waiting.wait()
        os.unlink(path)  # cleanup removes .aufs/ while it holds the lock
        os.rmdir(private)
    t.join(timeout=60)
    assert got == [True, True]


def _try_lock(path: str) -> bool:
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
