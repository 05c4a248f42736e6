"""apply_diff, diff and changes against GNU tar and find; peak memory of a 2 GiB layer.

Issue 3's speed and memory goals, as ratios measured in one run on a loop-mounted ext4
(the corpus: a Debian bookworm minbase root fs and an upper layer over it, see
:mod:`bench.corpus`):

====================  ============================================  ======
job                   reference                                     goal
====================  ============================================  ======
apply_diff            ``tar -xf`` (GNU tar) into a fresh directory  <= 1.0x
diff                  ``tar -cf - DIR | cat >/dev/null``             <= 1.0x
changes (in-process)  ``find UPPER -printf '%p %s %T@\\n'``          <= 1.15x
peak RSS              apply and diff of a 2 GiB layer (child)       < 64 MiB
====================  ============================================  ======

apply_diff and diff run with cold caches (sync + drop_caches before each timed run, both
sides alike); changes runs warm (sync only), as it does after a container exits.

Run as root: ``python3 -m bench.archive [--reps N] [--big-gib G] [--skip-big] [--profile]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable

import aufs
from aufs.driver import Driver
from bench import corpus, floors
from bench.child import ChildResult, drain, run_child
from bench.common import (
    Job,
    Report,
    compare,
    compare_interleaved,
    cpu_clock,
    drop_caches,
    loop_ext4,
    main_guard,
    require_root,
    require_tools,
)
from bench.profiling import profile

GOALS = {"apply": 1.0, "diff": 1.0, "changes": 1.15}  # changes: issue 17
RSS_GOAL_MIB = 64.0
CHANGES_PAIRS = 10
GIB = 1 << 30


class Bench:
    """A store on the loop filesystem, with the corpus copied beside it."""

    def __init__(self, mnt: str, engine: str, report: Report, reps: int) -> None:
        self.mnt = mnt
        self.engine = engine
        self.report = report
        self.reps = reps
        self.root = os.path.join(mnt, "store")
        self.scratch = os.path.join(mnt, "scratch")
        os.makedirs(self.scratch)
        self.d: Driver = aufs.init(self.root, [f"aufs.engine={engine}"])
        self._ids = itertools.count()
        base_src = corpus.base_tarball()
        self.base_tar = os.path.join(mnt, "base.tar")
        shutil.copyfile(base_src, self.base_tar)
        self.upper_tar = os.path.join(mnt, "upper.tar")
        stats = corpus.write_upper_tarball(base_src, self.upper_tar)
        report.note(f"corpus: {os.path.basename(base_src)} "
                    f"({os.path.getsize(base_src) >> 20} MiB); upper layer: "
                    f"{stats.modified} modified, {stats.added} added, {stats.deleted} deleted "
                    f"({stats.entries} tar entries); engine {self.d.engine.name}, "
                    f"whiteouts {self.d.whiteouts.name}")

    def new_id(self, tag: str) -> str:
        return f"{tag}-{next(self._ids)}"

    def fresh_dir(self) -> str:
        path = os.path.join(self.scratch, f"ref-{next(self._ids)}")
        os.mkdir(path)
        return path

    # -- one measurement, failures reported rather than fatal ------------------------------

    def attempt(self, name: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except Exception as exc:
            last = traceback.format_exception_only(exc)[-1].strip()
            self.report.note(f"{name}: could not run: {last}")
            traceback.print_exc(file=sys.stderr)
            return False
        return True

    # -- apply_diff ---------------------------------------------------------------------------

    def apply_job(self, tarball: str, parent: str, tag: str) -> Job:
        state: dict[str, str] = {}

        def setup() -> None:
            state["id"] = self.new_id(tag)
            self.d.create(state["id"], parent)

        def run() -> None:
            with open(tarball, "rb") as f:
                self.d.apply_diff(state["id"], parent, f)

        def teardown() -> None:
            self.d.remove(state["id"])

        return Job("driver.apply_diff", run, setup, teardown)

    def tar_x_job(self, tarball: str) -> Job:
        state: dict[str, str] = {}

        def setup() -> None:
            state["dir"] = self.fresh_dir()

        def run() -> None:
            subprocess.run(["tar", "-xf", tarball, "-C", state["dir"]], check=True)

        def teardown() -> None:
            shutil.rmtree(state["dir"])

        return Job("tar -xf", run, setup, teardown)

    def bench_apply(self) -> None:
        self.report.add(compare(
            "apply_diff (base layer)", self.apply_job(self.base_tar, "", "apply-base"),
            self.tar_x_job(self.base_tar), reps=self.reps, cold=True, goal=GOALS["apply"],
            note="bookworm minbase into a new layer; cold caches"))

    def bench_apply_upper(self, base: str) -> None:
        self.report.add(compare(
            "apply_diff (upper layer)", self.apply_job(self.upper_tar, base, "apply-upper"),
            self.tar_x_job(self.upper_tar), reps=self.reps, cold=True,
            note="the upper layer into a child of the base; tar makes .wh. files"))

    # -- diff ---------------------------------------------------------------------------------

    def diff_job(self, id: str) -> Job:
        def run() -> None:
            with self.d.diff(id) as stream:
                drain(stream)
        return Job("driver.diff read to EOF", run)

    def tar_c_job(self, directory: str) -> Job:
        cmd = f"tar -cf - -C '{directory}' . | cat >/dev/null"
        return Job("tar -cf - | cat >/dev/null",
                   lambda: subprocess.run(["sh", "-c", cmd], check=True))

    def bench_diff(self, id: str, label: str, goal: float | None) -> None:
        self.report.add(compare(
            f"diff ({label})", self.diff_job(id), self.tar_c_job(self.d.layout.diff(id)),
            reps=self.reps, cold=True, goal=goal, note="cold caches"))

    # -- changes ------------------------------------------------------------------------------

    def bench_changes(self, id: str) -> None:
        upper = self.d.layout.diff(id)
        find = ["find", upper, "-printf", "%p %s %T@\\n"]
        ref = Job("find UPPER -printf", lambda: subprocess.run(
            find, stdout=subprocess.DEVNULL, check=True))
        subject = Job("driver.changes", lambda: self.d.changes(id))
        self.report.add(compare_interleaved(
            "changes (upper layer)", subject, ref, rounds=self.reps, pairs=CHANGES_PAIRS,
            goal=GOALS["changes"],
            note=f"warm caches, {CHANGES_PAIRS} interleaved calls a round; the driver also "
                 "looks names up in the parent, find walks the upper only"))
        self.report.add(compare_interleaved(
            "changes (upper layer), CPU time", subject, ref, rounds=self.reps,
            pairs=CHANGES_PAIRS, clock=cpu_clock,
            note="the same in CPU seconds (find's own, and our fork and wait for it): "
                 "what a loaded machine moves least"))
        # The floors: what any Python changes must do, with none of the work of an answer.
        lower = self.d.layout.diff(self.d.parents(id)[0])
        for label, fn in (
                ("list the upper's directories", lambda: floors.list_dirs(upper)),
                ("... and lstat each name in the parent",
                 lambda: floors.list_and_look_up(upper, lower))):
            self.report.add(compare_interleaved(
                f"changes floor: {label}", Job("skeleton", fn), ref, rounds=self.reps,
                pairs=CHANGES_PAIRS, note="bench/floors.py: no answer made"))

    # -- memory -------------------------------------------------------------------------------

    def child_argv(self, job: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "bench.child", job, self.root, self.d.engine.name, *args]

    def bench_memory(self, size: int) -> None:
        env_ok = _child_env()
        idle = run_child(self.child_argv("idle"))
        if idle.returncode != 0:
            self.report.note(f"memory: the child cannot open the store: {idle.stderr[-500:]}")
            return
        self._rss("peak RSS, child baseline (init only)", idle, None, "python + aufs + init")
        src = os.path.join(self.scratch, "big-src")
        count = corpus.write_big_tree(src, size)
        big = "big"
        self.d.create(big)
        drop_caches()
        tar = subprocess.Popen(["tar", "-cf", "-", "-C", src, "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            applied = run_child(self.child_argv("apply", big), stdin=tar.stdout.fileno())
        finally:
            tar.stdout.close()
            tar.wait()
        label = f"{size / GIB:g} GiB in {count} files"
        if applied.returncode != 0:
            self.report.note(f"memory: apply_diff of {label} failed: {applied.stderr[-800:]}")
        else:
            self._rss("peak RSS, apply_diff of big layer", applied, RSS_GOAL_MIB, label)
            if (applied.reported("SIZE") or 0) < size:
                self.report.note(f"memory: apply_diff reported {applied.reported('SIZE')} "
                                 f"bytes, expected {size}")
        shutil.rmtree(src)
        if applied.returncode == 0:
            drop_caches()
            diffed = run_child(self.child_argv("diff", big))
            if diffed.returncode != 0:
                self.report.note(f"memory: diff of {label} failed: {diffed.stderr[-800:]}")
            else:
                self._rss("peak RSS, diff of big layer", diffed, RSS_GOAL_MIB, label)
                if (diffed.reported("BYTES") or 0) < size:
                    self.report.note(f"memory: diff streamed {diffed.reported('BYTES')} "
                                     f"bytes, less than the {size} in the layer")
        self.d.remove(big)
        if not env_ok:
            self.report.note("memory: children import aufs from PYTHONPATH as set up here")

    def _rss(self, name: str, result: ChildResult, goal: float | None, note: str) -> None:
        kib = result.reported("VmHWM")
        if kib is None:
            self.report.note(f"{name}: the child reported no VmHWM")
            return
        self.report.value(name, kib / 1024, "MiB", goal=goal, note=note)

    # -- profiles -----------------------------------------------------------------------------

    def profile_all(self, base: str, child: str) -> None:
        pid = self.new_id("prof")
        self.d.create(pid)

        def apply() -> None:
            with open(self.base_tar, "rb") as f:
                self.d.apply_diff(pid, "", f)

        def diff() -> None:
            self.diff_job(base).run()

        def changes() -> None:
            self.d.changes(child)

        for by in ("module", "self"):
            drop_caches()
            self._profile(f"apply_diff (base layer), by {by}", apply, by)
            self.d.remove(pid)
            self.d.create(pid)
            drop_caches()
            self._profile(f"diff (base layer), by {by}", diff, by)
            changes()  # changes is measured warm
            self._profile(f"changes (upper layer), by {by}", changes, by)
        self.d.remove(pid)

    def _profile(self, key: str, fn: Callable[[], object], by: str) -> None:
        def run() -> None:
            self.report.profiles[key] = profile(fn, top=12 if by == "module" else 16, by=by)
        self.attempt(f"profile {key}", run)

    def close(self) -> None:
        self.d.cleanup()


def _child_env() -> bool:
    """Make children import the same ``aufs`` and ``bench`` as this process."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(aufs.__file__)))
    bench_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [here, bench_parent, *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
    os.environ["PYTHONPATH"] = ":".join(dict.fromkeys(parts))
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="repetitions per ratio (median)")
    parser.add_argument("--engine", default="auto",
                        help="aufs.engine of the store (its whiteout format follows)")
    parser.add_argument("--big-gib", type=float, default=2.0, help="size of the memory test layer")
    parser.add_argument("--skip-big", action="store_true", help="skip the memory test")
    parser.add_argument("--profile", action="store_true", help="add cProfile hotspots")
    parser.add_argument("--only", choices=("apply", "diff", "changes", "memory"),
                        action="append", help="run only these jobs (repeatable)")
    args = parser.parse_args(argv)
    require_root()
    require_tools("tar", "find", "sh", "cat")
    jobs = set(args.only or ("apply", "diff", "changes", "memory"))
    if args.skip_big:
        jobs.discard("memory")
    corpus.base_tarball()  # build the cache before any filesystem is made
    big = int(args.big_gib * GIB)
    size = (3 << 30) + 3 * big if "memory" in jobs else 3 << 30
    report = Report("archive" if args.engine == "auto" else f"archive-{args.engine}")
    with loop_ext4(size, label="aufs-bench-archive") as mnt:
        b = Bench(mnt, args.engine, report, args.reps)
        try:
            base, child = "base", "upper"
            ready = bool(jobs - {"memory"}) and b.attempt(
                "prepare base layer", lambda: _prepare(b, base, child))
            if "apply" in jobs:
                b.attempt("apply_diff (base)", b.bench_apply)
                if ready:
                    b.attempt("apply_diff (upper)", lambda: b.bench_apply_upper(base))
            if ready and "diff" in jobs:
                b.attempt("diff (base)", lambda: b.bench_diff(base, "base layer",
                                                              GOALS["diff"]))
                b.attempt("diff (upper)", lambda: b.bench_diff(child, "upper layer", None))
            if ready and "changes" in jobs:
                b.attempt("changes", lambda: b.bench_changes(child))
            if "memory" in jobs:
                b.attempt("memory", lambda: b.bench_memory(big))
            if ready and args.profile:
                b.profile_all(base, child)
        finally:
            b.close()
    report.finish()
    failed = any(r.met is False for r in report.ratios) or any(
        v["met"] is False for v in report.values)
    return 1 if failed else 0


def _prepare(b: Bench, base: str, child: str) -> None:
    """The layers diff and changes read: the base, and the upper layer over it."""
    b.d.create(base)
    with open(b.base_tar, "rb") as f:
        b.d.apply_diff(base, "", f)
    b.d.create(child, base)
    with open(b.upper_tar, "rb") as f:
        b.d.apply_diff(child, base, f)


if __name__ == "__main__":
    main_guard(main)
