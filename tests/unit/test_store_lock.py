"""The store lock excludes threads of one process as it excludes processes: the plugin
serves dockerd's calls from a pool of threads that share one driver (flock on one shared
file description would let them all in)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from aufs.store.lock import StoreLock


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    lock = StoreLock(str(tmp_path / "lock"))
    inside: list[int] = []
    overlaps: list[list[int]] = []

    def worker(n: int) -> None:
        for _ in range(20):
            with lock.hold():
                inside.append(n)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                time.sleep(0.0005)
                inside.remove(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_a_second_thread_waits_for_the_holder(tmp_path: Path) -> None:
    lock = StoreLock(str(tmp_path / "lock"))
    held, got = threading.Event(), threading.Event()

    def other() -> None:
        with lock.hold():
            got.set()

    with lock.hold(), lock.hold():  # re-entrant in its own thread
        t = threading.Thread(target=other)
        t.start()
        held.set()
        assert not got.wait(0.3)
    assert got.wait(10)
    t.join()
