"""Run the load test: several ``loadworker.py`` processes on one store, then check it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aufs
from tests.reliability import invariants, loadworker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadworker.py")
GRACE = 45.0  # seconds past the run's end before a worker counts as deadlocked


@dataclass
class LoadReport:
    engine: str
    seed: int
    seconds: float
    procs: int
    threads: int
    ops: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def summary(self) -> str:
        total = sum(self.ops.values())
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        return (f"load [{self.engine}] seed={self.seed}: {self.procs} processes x "
                f"{self.threads} threads, {self.seconds:.0f} s: {total} operations ({ops}); "
                f"{sum(self.expected.values())} documented errors; {len(self.problems)} "
                f"problems; {self.elapsed:.1f} s wall")

    def failure_text(self, limit: int = 6) -> str:
        lines = [self.summary(), *(f"  {p}" for p in self.problems[:limit])]
        lines.append(f"  repeat with AUFS_RELIABILITY_SEED={self.seed}")
        return "\n".join(lines)


def prepare(root: str, engine: str, seed: int) -> None:
    rng = random.Random(f"{seed}/load-setup")
    d = aufs.init(root, [f"aufs.engine={engine}"])
    try:
        for b in loadworker.BASES:
            d.create(b)
            for n in range(20):
                with open(os.path.join(d.layout.diff(b), f"f{n}"), "wb") as f:
                    f.write(rng.randbytes(rng.randrange(100, 5000)))
        for c in loadworker.CHILDREN:
            d.create(c, rng.choice(loadworker.BASES))
    finally:
        d.cleanup()


def run_load(root: str, engine: str, seconds: float, seed: int, procs: int = 3,
             threads: int = 8) -> LoadReport:
    report = LoadReport(engine, seed, seconds, procs, threads)
    lockdir = os.path.join(os.path.dirname(root), "id-locks")
    os.makedirs(lockdir, exist_ok=True)
    prepare(root, engine, seed)
    start = time.monotonic()
    workers = []
    for p in range(procs):
        config = {"root": root, "engine": engine, "seconds": seconds, "threads": threads,
                  "seed": seed, "proc": p, "lockdir": lockdir, "grace": GRACE}
        workers.append(subprocess.Popen(
            [sys.executable, WORKER, json.dumps(config)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, close_fds=True))
    for p, w in enumerate(workers):
        try:
            out, err = w.communicate(timeout=seconds + GRACE + 30)
        except subprocess.TimeoutExpired:
            w.kill()
            out, err = w.communicate()
            report.problems.append(f"process {p} hung (watchdog did not fire): {err[-3000:]!r}")
            continue
        _collect(report, p, w.returncode, out.decode(), err.decode())
    report.elapsed = time.monotonic() - start
    report.problems += final_problems(root, engine)
    return report


def _collect(report: LoadReport, p: int, rc: int, out: str, err: str) -> None:
    if rc != 0 or not out.strip():
        what = "deadlocked (watchdog fired)" if "Thread 0x" in err else f"exited {rc}"
        report.problems.append(f"process {p} {what}: {err[-6000:]}")
        return
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    report.ops.update(data["ops"])
    report.expected.update(data["expected"])
    report.problems += [f"process {p}: unexpected {u}" for u in data["unexpected"]]
    report.problems += [f"process {p}: {v}" for v in data["violations"]]
    if data["net"]:
        report.problems.append(f"process {p}: gets not put: {data['net']}")


def final_problems(root: str, engine: str) -> list[str]:
    """Every count 0, nothing mounted, store sound; then cleanup leaves nothing."""
    problems = []
    leftover = [m for m in invariants.mounts_under(root) if m != os.path.realpath(root)]
    if leftover:
        problems.append(f"unions still mounted after every get was put: {leftover}")
    d = aufs.init(root, [f"aufs.engine={engine}"])
    try:
        problems += invariants.store_problems(root)
        for i in d.ids():
            if d.refcount(i) != 0:
                problems.append(f"layer {i}: count {d.refcount(i)} after every get was put")
    finally:
        d.cleanup()
    problems += invariants.leak_problems(root)
    return problems
