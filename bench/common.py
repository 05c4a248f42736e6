"""What every benchmark shares: a throw-away ext4 on a loop device, ratio timing, reports.

Benchmarks report *ratios* against a reference run in the same process tree, on the same
filesystem, never absolute times. The root disk of a CI machine creates files slowly
and unevenly, so every benchmark runs on a loop-mounted ext4 image that it makes and
removes itself (:func:`loop_ext4`), even on an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from aufs._sys import libc, mountinfo
from aufs.union.fuse_overlayfs import daemon_pids_below
from bench.profiling import Hotspot

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MNT_DETACH = 0x2


class BenchError(RuntimeError):
    """The benchmark cannot run here (not root, a tool missing, ...)."""


# -- environment -----------------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise BenchError("benchmarks mount filesystems: run them as root")


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise BenchError("missing tools: " + ", ".join(missing))


def _run(argv: Sequence[str]) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def release_mounts_below(path: str) -> list[str]:
    """Unmount everything mounted strictly below ``path`` (deepest first) and kill the FUSE
    daemons that served it. Returns what had to be released (empty on a clean run)."""
    released = []
    for entry in reversed([e for e in mountinfo.mounts_under(path) if e.mountpoint != path]):
        released.append(entry.mountpoint)
        try:
            libc.umount2(entry.mountpoint, 0)
        except OSError:
            with contextlib.suppress(OSError):
                libc.umount2(entry.mountpoint, MNT_DETACH)
    for pid in daemon_pids_below(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return released


def _term_as_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def loop_ext4(size_bytes: int, *, label: str = "aufs-bench",
              image_dir: str = "/var/tmp") -> Iterator[str]:
    """A fresh ext4 filesystem of ``size_bytes`` (sparse image) mounted on a loop device.

    Yields the mount point. On leaving — normally, on an exception, Ctrl-C or SIGTERM —
    everything mounted below it is released, then the filesystem is unmounted, the loop
    device detached and the image deleted.
    """
    require_root()
    require_tools("mkfs.ext4", "losetup", "mount")
    old_term = signal.signal(signal.SIGTERM, _term_as_exit)
    work = tempfile.mkdtemp(prefix=f"{label}-", dir=image_dir)
    image = os.path.join(work, "fs.img")
    mnt = os.path.join(work, "mnt")
    device = ""
    mounted = False
    try:
        os.mkdir(mnt)
        with open(image, "wb") as f:
            f.truncate(size_bytes)
        # No lazy inode-table/journal init: a kernel thread would otherwise keep
        # writing to the image in the background while we time things.
        _run(["mkfs.ext4", "-q", "-F", "-L", label[:16],
              "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
        try:  # O_DIRECT on the image: no second page cache between us and the disk
            device = _run(["losetup", "--find", "--show", "--direct-io=on", image])
        except BenchError:
            device = _run(["losetup", "--find", "--show", image])
        _run(["mount", "-t", "ext4", device, mnt])
        mounted = True
        yield mnt
    finally:
        try:
            if mounted:
                leaked = release_mounts_below(mnt)
                if leaked:
                    print(f"bench: released leftover mounts: {leaked}", file=sys.stderr)
                try:
                    libc.umount2(mnt, 0)
                except OSError:
                    libc.umount2(mnt, MNT_DETACH)
            if device:
                subprocess.run(["losetup", "-d", device], check=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            signal.signal(signal.SIGTERM, old_term)


def sync() -> None:
    os.sync()


def drop_caches() -> bool:
    """Write back, then drop the page, dentry and inode caches; False if not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


# -- timing ----------------------------------------------------------------------------------


def _noop() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Job:
    """One side of a comparison: ``run`` is timed; ``setup``/``teardown`` around it are not."""

    label: str
    run: Callable[[], object]
    setup: Callable[[], object] = _noop
    teardown: Callable[[], object] = _noop


@dataclass(slots=True)
class Ratio:
    name: str
    subject: str
    reference: str
    ratios: list[float]
    subject_s: list[float]
    reference_s: list[float]
    goal: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.median <= self.goal

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["median"] = self.median
        out["met"] = self.met
        return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, subject: Job, reference: Job, *, reps: int, warmup: int = 1,
            cold: bool = False, goal: float | None = None, note: str = "") -> Ratio:
    """Time ``subject`` against ``reference`` ``reps`` times, alternating which goes first.

    Before each timed run: its setup, then a sync (and a cache drop if ``cold``) so that
    writeback from the run before is not billed to this one. The ratio of each repetition
    is subject / reference; the reported figure is their median.
    """
    def one(job: Job) -> float:
        job.setup()
        if cold:
            drop_caches()
        else:
            sync()
        try:
            return timed(job.run)
        finally:
            job.teardown()

    for _ in range(warmup):
        one(reference)
        one(subject)
    ratio = Ratio(name, subject.label, reference.label, [], [], [], goal, note)
    for rep in range(reps):
        if rep % 2:
            s = one(subject)
            r = one(reference)
        else:
            r = one(reference)
            s = one(subject)
        ratio.subject_s.append(s)
        ratio.reference_s.append(r)
        ratio.ratios.append(s / r)
    return ratio


def cpu_clock() -> float:
    """CPU seconds of this process and of its waited-for children: a clock for
    :func:`compare_interleaved` that other work on the machine hardly moves (a job that
    runs a program is charged for its fork and wait here and for the program's CPU)."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


def compare_interleaved(name: str, subject: Job, reference: Job, *, rounds: int, pairs: int,
                        warmup: int = 2, goal: float | None = None, note: str = "",
                        clock: Callable[[], float] = time.perf_counter) -> Ratio:
    """Like :func:`compare` for short operations (a mount, an unmount): each round times
    ``pairs`` single runs of each side interleaved one by one (alternating which goes
    first), so that both sides see the same machine load; a round's ratio is the sum of
    the subject's times over the sum of the reference's. A sync starts each round.
    The jobs' ``setup``/``teardown`` run around each round, untimed. ``clock``:
    wall time, or :func:`cpu_clock`.
    """
    for _ in range(warmup):
        reference.run()
        subject.run()
    ratio = Ratio(name, subject.label, reference.label, [], [], [], goal, note)
    for _ in range(rounds):
        subject.setup()
        reference.setup()
        sync()
        totals = {id(subject): 0.0, id(reference): 0.0}
        for i in range(pairs):
            for job in ((subject, reference) if i % 2 else (reference, subject)):
                t0 = clock()
                job.run()
                totals[id(job)] += clock() - t0
        s_total, r_total = totals[id(subject)], totals[id(reference)]
        subject.teardown()
        reference.teardown()
        ratio.subject_s.append(s_total)
        ratio.reference_s.append(r_total)
        ratio.ratios.append(s_total / r_total)
    return ratio


def loop(fn: Callable[[], object], n: int) -> Callable[[], None]:
    """``fn`` called ``n`` times, as one timed unit."""
    def run() -> None:
        for _ in range(n):
            fn()
    return run


# -- reports ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    """Rows of ratios and measured values; printed as a table and written as JSON."""

    name: str
    ratios: list[Ratio] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, list[Hotspot]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def add(self, ratio: Ratio) -> Ratio:
        self.ratios.append(ratio)
        print(_ratio_line(ratio), flush=True)
        return ratio

    def value(self, name: str, value: float, unit: str, *, goal: float | None = None,
              note: str = "") -> None:
        """A measured quantity that is not a time (peak RSS, sizes); lower is better."""
        met = None if goal is None else value < goal
        self.values.append({"name": name, "value": value, "unit": unit, "goal": goal,
                            "met": met, "note": note})
        print(f"  {name}: {value:.1f} {unit}" + (f" (goal < {goal:g} {unit})" if goal else "")
              + (f"  {note}" if note else ""), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def table(self) -> str:
        head = (f"{'benchmark':<34} {'median':>7} {'min':>7} {'max':>7} {'goal':>6}  "
                f"{'ok':<3} reference")
        lines = [f"== {self.name} ==", head, "-" * len(head)]
        for r in self.ratios:
            goal = f"{r.goal:.2f}" if r.goal is not None else "-"
            ok = {True: "yes", False: "NO", None: "-"}[r.met]
            lines.append(f"{r.name:<34} {r.median:>6.2f}x {min(r.ratios):>6.2f}x "
                         f"{max(r.ratios):>6.2f}x {goal:>6}  {ok:<3} {r.reference}")
        for v in self.values:
            goal = f"<{v['goal']:g}" if v["goal"] is not None else "-"
            ok = {True: "yes", False: "NO", None: "-"}[v["met"]]
            lines.append(f"{v['name']:<34} {v['value']:>7.1f} {v['unit']:<15} {goal:>6}  {ok}")
        for key, spots in self.profiles.items():
            lines.append(f"-- profile: {key} (share of profiled time: self / with callees)")
            for h in spots:
                lines.append(f"  {h.self_share:6.1%} {h.cum_share:6.1%} {h.calls:>7}  {h.function}")
        lines.extend(f"note: {n}" for n in self.notes)
        load = ", ".join(f"{x:.1f}" for x in (self.load_at_start[0], os.getloadavg()[0]))
        lines.append(f"load average (1 min) at start, at end: {load} on {os.cpu_count()} CPUs"
                     " — other work on the machine inflates CPU-bound subjects")
        return "\n".join(lines)

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        data = {
            "name": self.name,
            "started": self.started,
            "host": {"kernel": os.uname().release, "cpus": os.cpu_count(),
                     "loadavg_at_start": self.load_at_start,
                     "loadavg_at_end": os.getloadavg(), "python": sys.version.split()[0]},
            "ratios": [r.as_json() for r in self.ratios],
            "values": self.values,
            "profiles": {k: [asdict(h) for h in v] for k, v in self.profiles.items()},
            "notes": self.notes,
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
        return path

    def finish(self) -> None:
        print()
        print(self.table())
        print(f"\nwritten: {self.write()}")


def _ratio_line(r: Ratio) -> str:
    goal = "" if r.goal is None else f" (goal <= {r.goal:.2f}x: {'met' if r.met else 'NOT met'})"
    spread = ", ".join(f"{x:.2f}" for x in r.ratios)
    return f"  {r.name}: {r.median:.2f}x {r.reference}{goal}  [{spread}]"


def main_guard(fn: Callable[[list[str]], int]) -> None:
    """Run a benchmark's ``main``; a :class:`BenchError` is one line on stderr."""
    try:
        code = fn(sys.argv[1:])
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
