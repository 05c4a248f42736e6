"""One process of the load test: N threads hammering one store through the API.

Run as ``python loadworker.py CONFIG_JSON``; prints one JSON report line on stdout.

Threads pick random operations on a small pool of overlapping ids (every process uses
the same pool): create, get (held for a moment, then put), diff, changes, diff_size,
remove. Only the documented errors are expected (a layer that another thread just
removed, created or made a parent); anything else is recorded with its traceback.

References are tracked per process: while a thread holds a layer its union must stay
mounted and its count be >= 1, whatever the other 23 threads do; at the end every
process has put what it got, so every count must be 0 and nothing mounted. Because
Docker's ``remove`` unmounts a layer whatever its count, a remover first takes an
exclusive ``flock`` on the id (holders take it shared) — the rule a real user of the
driver (Docker's layer store) follows too: never remove a layer that is in use.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import json
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aufs
from aufs.graphdriver import LayerExistsError, LayerInUseError, LayerNotFoundError

EXPECTED = (LayerNotFoundError, LayerExistsError, LayerInUseError)
BASES = ("b0", "b1", "b2")
CHILDREN = ("c0", "c1", "c2", "c3", "c4", "c5")
GRANDCHILDREN = ("d0", "d1", "d2")
POOL = (*BASES, *CHILDREN, *GRANDCHILDREN)
OPS = ("create", "get", "get", "get", "diff", "changes", "size", "remove")


def parent_for(layer_id: str, rng: random.Random) -> str:
    if layer_id in BASES:
        return ""
    if layer_id in CHILDREN:
        return rng.choice(BASES)
    return rng.choice(CHILDREN)


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.d = aufs.init(config["root"], [f"aufs.engine={config['engine']}"])
        self.deadline = time.monotonic() + float(config["seconds"])
        self.lockdir: str = config["lockdir"]
        self.ops: Counter[str] = Counter()
        self.expected: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.violations: list[str] = []
        self.net: Counter[str] = Counter()  # gets minus puts, per id, this process
        self.busy = 0
        self._mutex = threading.Lock()

    @contextlib.contextmanager
    def id_lock(self, layer_id: str, exclusive: bool) -> Iterator[bool]:
        fd = os.open(os.path.join(self.lockdir, layer_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def hold(self, layer_id: str, rng: random.Random) -> None:
        """get, check the union while holding it (maybe twice), put as many times."""
        d = self.d
        with self.id_lock(layer_id, exclusive=False):
            times = 2 if rng.random() < 0.2 else 1
            got = 0
            try:
                for _ in range(times):
                    path = d.get(layer_id)
                    got += 1
                    with self._mutex:
                        self.net[layer_id] += 1
                time.sleep(rng.uniform(0, 0.01))
                has_parent = bool(d.parents(layer_id))
                if has_parent and not d.mounted(layer_id):
                    self.violations.append(f"{layer_id} held {got}x but not mounted")
                if d.refcount(layer_id) < got:
                    self.violations.append(
                        f"{layer_id} held {got}x by this thread, count {d.refcount(layer_id)}")
                os.listdir(path)
            finally:
                for _ in range(got):
                    d.put(layer_id)
                    with self._mutex:
                        self.net[layer_id] -= 1

    def one(self, rng: random.Random) -> None:
        op = rng.choice(OPS)
        layer_id = rng.choice(POOL)
        d = self.d
        try:
            if op == "create":
                d.create(layer_id, parent_for(layer_id, rng))
            elif op == "get":
                self.hold(layer_id, rng)
            elif op == "diff":
                with d.diff(layer_id) as stream:
                    try:
                        while stream.read(1 << 16):
                            pass
                    except FileNotFoundError:
                        # Reading a tar stream while another thread removes the layer:
                        # the caller's misuse (Docker never does it); only the call
                        # itself must raise the documented errors.
                        with self._mutex:
                            self.expected["diff: read while removed (ENOENT)"] += 1
                        return
            elif op == "changes":
                d.changes(layer_id)
            elif op == "size":
                d.diff_size(layer_id)
            elif op == "remove":
                with self.id_lock(layer_id, exclusive=True) as free:
                    if not free:
                        with self._mutex:
                            self.busy += 1
                        return
                    d.remove(layer_id)
            with self._mutex:
                self.ops[op] += 1
        except EXPECTED as exc:
            with self._mutex:
                self.expected[f"{op}: {type(exc).__name__}"] += 1
        except Exception:
            with self._mutex:
                self.unexpected.append(f"{op} {layer_id}: {traceback.format_exc()}")

    def thread(self, index: int) -> None:
        rng = random.Random(f"{self.config['seed']}/{self.config['proc']}/{index}")
        while time.monotonic() < self.deadline and len(self.unexpected) < 20:
            self.one(rng)

    def run(self) -> dict[str, Any]:
        threads = [threading.Thread(target=self.thread, args=(i,), name=f"load-{i}")
                   for i in range(int(self.config["threads"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.d.close()
        return {"proc": self.config["proc"], "ops": dict(self.ops),
                "expected": dict(self.expected), "unexpected": self.unexpected,
                "violations": self.violations, "busy": self.busy,
                "net": {k: v for k, v in self.net.items() if v}}


def main() -> None:
    config = json.loads(sys.argv[1])
    # The watchdog: a deadlock prints every thread's stack and ends the process.
    faulthandler.dump_traceback_later(float(config["seconds"]) + float(config["grace"]),
                                      exit=True)
    report = Worker(config).run()
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
