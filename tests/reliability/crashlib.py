"""Kill a real process at a random moment of a store operation, then check the store.

One trial: prepare the store (in this process), hand a command to a child process that
was started ahead of time (``child.py``, already past its imports), wait until it has
opened the store, sleep a random delay, SIGKILL it, then open the store again with a
fresh ``aufs.init`` and check it: the store invariants, the reference counts against
what the child reported doing, the driver's dead-holder rule, that the store still works,
and that ``cleanup()`` leaves no mount and no fuse-overlayfs daemon.

Randomness is seeded: a trial is named by ``(seed, mode, trial)`` and the seed is printed
with every failure (``AUFS_RELIABILITY_SEED=<seed>`` repeats the same choices; the kill
moment itself depends on timing and so is only approximately repeated).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import aufs
from aufs.graphdriver import DriverError
from tests.reliability import invariants

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
STARTUP_TIMEOUT = 20.0


def base_seed() -> int:
    """The run's seed: ``AUFS_RELIABILITY_SEED`` if set, else a fresh random one."""
    env = os.environ.get("AUFS_RELIABILITY_SEED", "")
    return int(env) if env else random.SystemRandom().randrange(2**32)


def trial_rng(seed: int, mode: str, trial: int) -> random.Random:
    return random.Random(f"{seed}/{mode}/{trial}")


# -- the child ------------------------------------------------------------------------

class _Child:
    """A started ``child.py`` whose stdout is drained by a thread into ``lines``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, close_fds=True,
        )
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line arrived (monotonic)
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        out: IO[bytes] | None = self.proc.stdout
        assert out is not None
        for raw in out:
            line = raw.decode(errors="replace").rstrip("\n")
            self.times.append(time.monotonic())
            self.lines.append(line)
            if line == "started":
                self.started.set()
        self.started.set()  # EOF: the child died; the waiter checks returncode

    def go(self, command: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        stdin.flush()

    def kill(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait()
        self._reader.join(5)
        return rc

    def stderr(self) -> str:
        err = self.proc.stderr
        if err is None:
            return ""
        return err.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass
class KillRecord:
    """What the child reported before it was killed."""

    delay: float
    events: list[tuple[str, str, str]]  # ("B"|"E", op, id)
    returncode: int
    stderr: str
    times: list[float] = field(default_factory=list)  # when each event was seen (s after start)

    def duration(self, op: str) -> float | None:
        """Seconds from the start to the end of the first completed ``op``, if any."""
        began = None
        for (be, o, _), t in zip(self.events, self.times, strict=True):
            if o == op and be == "B":
                began = t
            elif o == op and be == "E" and began is not None:
                return t - began
        return None

    @property
    def completed(self) -> list[tuple[str, str]]:
        return [(op, i) for be, op, i in self.events if be == "E"]

    @property
    def inflight(self) -> tuple[str, str] | None:
        """The operation that had begun and not ended when the kill came."""
        if self.events and self.events[-1][0] == "B":
            return self.events[-1][1], self.events[-1][2]
        return None

    @property
    def phase(self) -> str:
        op = self.inflight
        if op is not None:
            return f"during {op[0]}"
        return "idle" if self.events else "before the first operation"


class Crasher:
    """Runs children one after another, always keeping the next one started (imports take
    most of a child's start-up; this hides them behind the checks of the previous trial)."""

    def __init__(self) -> None:
        self._next: _Child | None = _Child()

    def kill_during(self, command: dict[str, Any], delay: float) -> KillRecord:
        child = self._next or _Child()
        self._next = _Child()
        try:
            child.go(command)
            if not child.started.wait(STARTUP_TIMEOUT) or child.proc.poll() is not None:
                rc = child.kill()
                raise RuntimeError(f"child did not start (rc={rc}): {child.stderr()}")
            time.sleep(delay)
            if child.proc.poll() is not None:
                rc = child.kill()
                raise RuntimeError(f"child died by itself (rc={rc}): {child.stderr()}")
            rc = child.kill()
            events, times = [], []
            t0 = child.times[child.lines.index("started")]
            for line, seen in zip(child.lines, child.times, strict=True):
                parts = line.split(" ")
                if len(parts) == 3 and parts[0] in ("B", "E"):
                    events.append((parts[0], parts[1], parts[2]))
                    times.append(seen - t0)
            return KillRecord(delay, events, rc, child.stderr(), times)
        finally:
            child.close()

    def close(self) -> None:
        if self._next is not None:
            self._next.close()
            self._next = None


# -- reference counts -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RefState:
    exists: bool
    count: int
    mounted: bool


def _apply(state: RefState, op: str, has_parent: bool) -> RefState:
    if op == "get":
        return RefState(True, state.count + 1, has_parent)
    if op == "put":
        count = max(state.count - 1, 0)
        return RefState(True, count, has_parent and count > 0)
    if op == "remove":
        return RefState(False, 0, False)
    return state


def _allowed(before: RefState, op: str, has_parent: bool) -> set[RefState]:
    """States the kill may leave during ``op``: before, after and what lies between."""
    after = _apply(before, op, has_parent)
    states = {before, after}
    if has_parent and op == "get" and not before.mounted:
        states.add(RefState(True, before.count, True))   # mounted, count not yet written
        states.add(RefState(True, 0, True))
    if has_parent and op == "put" and before.count <= 1:
        states.add(RefState(True, 0, True))               # count written, not yet unmounted
    if op == "remove":
        states.add(RefState(True, before.count, False))    # unmounted, not yet renamed
    return states


def refcount_problems(d: aufs.Driver, rec: KillRecord, parents: dict[str, list[str]]) -> list[str]:
    """On-disk counts and mounts agree with what the child did (``parents``: chains before)."""
    states: dict[str, RefState] = {i: RefState(True, 0, False) for i in parents}
    for op, i in rec.completed:
        if i in states:
            states[i] = _apply(states[i], op, bool(parents.get(i)))
    allowed = {i: {s} for i, s in states.items()}
    if rec.inflight is not None:
        op, i = rec.inflight
        if i in states:
            allowed[i] = _allowed(states[i], op, bool(parents.get(i)))
    problems = []
    for i, ok in allowed.items():
        exists = d.exists(i)
        seen = RefState(exists, d.refcount(i) if exists else 0,
                        exists and d.mounted(i))
        if not exists and any(not s.exists for s in ok):
            continue
        if seen not in ok:
            problems.append(f"layer {i}: found {seen}, expected one of {sorted(ok, key=str)}")
    return problems


def holder_rule_problems(d: aufs.Driver, ids: list[str]) -> list[str]:
    """A get/put pair from a new process obeys the rule: the mount table is the truth."""
    problems = []
    for i in ids:
        has_parent = bool(d.parents(i))
        count, mounted = d.refcount(i), d.mounted(i)
        path = d.get(i)
        want = 1 if has_parent and not mounted else count + 1
        got = (d.refcount(i), d.mounted(i))
        if got != (want, has_parent):
            problems.append(f"get {i} (count {count}, mounted {mounted}): now {got}, "
                            f"expected {(want, has_parent)}")
        if not os.path.isdir(path):
            problems.append(f"get {i} returned {path}, not a directory")
        d.put(i)
        want_after = (count if mounted or not has_parent else 0,
                      has_parent and mounted and count > 0)
        got = (d.refcount(i), d.mounted(i))
        if got != want_after:
            problems.append(f"put {i} (count {count}, mounted {mounted}): now {got}, "
                            f"expected {want_after}")
    return problems


def liveness_problems(d: aufs.Driver, tag: str, rng: random.Random) -> list[str]:
    """The recovered store still does its job: create, get, write, diff, put, remove."""
    ids = d.ids()
    parent = rng.choice(ids) if ids else ""
    probe = f"alive-{tag}"
    try:
        d.create(probe, parent)
        path = d.get(probe)
        with open(os.path.join(path, "alive"), "w") as f:
            f.write(tag)
        changed = [str(c) for c in d.changes(probe)]
        d.put(probe)
        d.remove(probe)
    except (OSError, DriverError) as exc:
        return [f"store unusable after recovery: {type(exc).__name__}: {exc}"]
    if "A /alive" not in changed:
        return [f"changes of a fresh layer after recovery: {changed}"]
    return []


# -- scenarios ------------------------------------------------------------------------

@dataclass
class Scenario:
    """One kind of operation to kill. ``prepare`` sets the store up and returns the child's
    args; ``verify`` adds checks of its own (after the generic ones)."""

    mode: str
    max_delay: float
    prepare: Callable[[aufs.Driver, int, random.Random], dict[str, Any]]
    verify: Callable[[aufs.Driver, KillRecord, dict[str, Any]], list[str]] = (
        lambda d, rec, args: [])
    sample_holders: int = 6


@dataclass
class TrialFailure:
    trial: int
    phase: str
    delay: float
    problems: list[str]


@dataclass
class Report:
    mode: str
    engine: str
    seed: int
    trials: int = 0
    failures: list[TrialFailure] = field(default_factory=list)
    phases: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        phases = ", ".join(f"{k}: {v}" for k, v in sorted(self.phases.items()))
        return (f"crash {self.mode} [{self.engine}] seed={self.seed}: {self.trials} trials, "
                f"{len(self.failures)} failed, {self.seconds:.1f} s; kills landed {phases}")

    def failure_text(self, limit: int = 5) -> str:
        lines = [self.summary()]
        for f in self.failures[:limit]:
            lines.append(f"  trial {f.trial} (killed {f.phase} after {f.delay * 1000:.0f} ms):")
            lines.extend(f"    {p}" for p in f.problems[:12])
        lines.append(f"  repeat with AUFS_RELIABILITY_SEED={self.seed}")
        return "\n".join(lines)


def run_trials(scenario: Scenario, root: str, engine: str, trials: int, seed: int,
               stop_after_failures: int = 3) -> Report:
    """Run ``trials`` kill trials of ``scenario`` on the store at ``root``."""
    opts = [f"aufs.engine={engine}"]
    report = Report(scenario.mode, engine, seed)
    crasher = Crasher()
    start = time.monotonic()
    max_delay = scenario.max_delay
    try:
        for trial in range(trials):
            rng = trial_rng(seed, scenario.mode, trial)
            problems, rec = _one_trial(scenario, root, opts, engine, crasher, trial, rng, seed,
                                       max_delay)
            if rec is not None and rec.phase == "idle" and rec.times:
                # The child finished all its work before the kill (a fast machine, or a
                # faster driver): aim the later kills inside that span.
                max_delay = min(max_delay, rec.times[-1])
            report.trials += 1
            report.phases[rec.phase if rec else "setup"] += 1
            if problems:
                report.failures.append(TrialFailure(trial, rec.phase if rec else "setup",
                                                    rec.delay if rec else 0.0, problems))
                if len(report.failures) >= stop_after_failures:
                    break
    finally:
        crasher.close()
        report.seconds = time.monotonic() - start
    return report


def _one_trial(scenario: Scenario, root: str, opts: list[str], engine: str, crasher: Crasher,
               trial: int, rng: random.Random, seed: int, max_delay: float
               ) -> tuple[list[str], KillRecord | None]:
    d = aufs.init(root, opts)
    try:
        args = scenario.prepare(d, trial, rng)
        parents = {i: d.parents(i) for i in d.ids()}
    finally:
        d.cleanup()
    command = {"mode": scenario.mode, "root": root, "engine": engine,
               "seed": f"{seed}/{scenario.mode}/{trial}", "args": args}
    rec = crasher.kill_during(command, rng.uniform(0, max_delay))
    problems: list[str] = []
    try:
        v = aufs.init(root, opts)
    except Exception as exc:
        return [f"aufs.init after the kill: {type(exc).__name__}: {exc}"], rec
    try:
        problems += invariants.store_problems(root)
        if not problems:  # the rest assumes a sound store
            problems += refcount_problems(v, rec, parents)
            problems += scenario.verify(v, rec, args)
            ids = v.ids()
            inflight = [rec.inflight[1]] if rec.inflight and rec.inflight[1] in ids else []
            others = [i for i in ids if i not in inflight]
            sample = inflight + rng.sample(others, min(len(others), scenario.sample_holders))
            problems += holder_rule_problems(v, sample)
            problems += liveness_problems(v, f"{trial}", rng)
    except Exception as exc:
        problems.append(f"checking raised {type(exc).__name__}: {exc}")
    finally:
        try:
            v.cleanup()
        except Exception as exc:
            problems.append(f"cleanup() raised {type(exc).__name__}: {exc}")
    problems += invariants.leak_problems(root)
    if problems:
        _force_unmount(root)
    return problems, rec


def _force_unmount(root: str) -> None:
    """After a failed trial, leave no mount behind for the next one (or the leak check)."""
    for mp in reversed(invariants.mounts_under(root)):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
