"""Long reliability runs (issue 6), outside CI. As root, from the repository root:

    python -m stress.run crash [--trials 500] [--ops init,create,remove,getput,apply,convert]
                               [--engines overlay,fuse-overlayfs] [--seed N]
    python -m stress.run load  [--seconds 60] [--engines overlay,fuse-overlayfs] [--seed N]
    python -m stress.run all   (both, with the defaults)

Each run works in a fresh temporary directory, leaves no mount behind, and writes a short
report (trials, failures, time) to ``stress/results/`` and prints it. Exit code 1 if any
trial failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stress.report import write_report
from tests.reliability import crashlib, scenarios
from tests.reliability.convertcrash import ConvertCrash
from tests.reliability.loadlib import run_load
from tests.reliability.loopfs import unmount_all

OPS = ("init", "create", "remove", "getput", "apply", "convert")


def _scenario(op: str, workdir: Path, seed: int) -> crashlib.Scenario:
    fixed = {"init": scenarios.INIT, "create": scenarios.CREATE, "remove": scenarios.REMOVE,
             "getput": scenarios.GETPUT}
    if op in fixed:
        return fixed[op]
    if op == "apply":
        return scenarios.ApplyScenario(str(workdir), seed).scenario
    raise ValueError(f"unknown operation {op!r} (one of: {', '.join(OPS)})")


def crash(trials: int, ops: list[str], engines: list[str], seed: int) -> int:
    lines, data, failed = [], [], 0
    for engine in engines:
        for op in ops:
            if op == "convert" and engine != engines[0]:
                continue  # convert runs both engines in one go (overlay <-> aufs format)
            workdir = Path(tempfile.mkdtemp(prefix=f"aufs-stress-{op}-"))
            try:
                if op == "convert":
                    report = ConvertCrash(workdir, seed).run(trials, stop_after_failures=20)
                else:
                    scenario = _scenario(op, workdir, seed)
                    report = crashlib.run_trials(scenario, str(workdir / "store"), engine,
                                                 trials, seed, stop_after_failures=20)
            finally:
                unmount_all(workdir)
                shutil.rmtree(workdir, ignore_errors=True)
            print(report.summary(), flush=True)
            lines.append(report.summary())
            if report.failures:
                failed += 1
                lines.append(report.failure_text(limit=10))
            data.append({"op": op, "engine": report.engine, "trials": report.trials,
                         "failures": len(report.failures), "seconds": round(report.seconds, 1),
                         "phases": dict(report.phases)})
    write_report("crash", {"seed": seed, "runs": data}, lines)
    return 1 if failed else 0


def load(seconds: float, engines: list[str], seed: int) -> int:
    lines: list[str] = []
    data: list[dict[str, Any]] = []
    failed = 0
    for engine in engines:
        workdir = Path(tempfile.mkdtemp(prefix="aufs-stress-load-"))
        try:
            report = run_load(str(workdir / "store"), engine, seconds, seed)
        finally:
            unmount_all(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        print(report.summary(), flush=True)
        lines.append(report.summary())
        if report.problems:
            failed += 1
            lines.append(report.failure_text(limit=20))
        data.append({"engine": engine, "seconds": seconds, "operations": dict(report.ops),
                     "documented_errors": dict(report.expected),
                     "problems": len(report.problems), "wall": round(report.elapsed, 1)})
    write_report("load", {"seed": seed, "runs": data}, lines)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.run",
                                     description="long reliability runs (issue 6)")
    parser.add_argument("what", choices=("crash", "load", "all"))
    parser.add_argument("--trials", type=int, default=500, help="kill trials per operation")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--seconds", type=float, default=60.0, help="load run length")
    parser.add_argument("--engines", default="overlay,fuse-overlayfs")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else crashlib.base_seed()
    engines = [e for e in args.engines.split(",") if e]
    print(f"seed {seed} (--seed {seed} repeats it)", flush=True)
    start = time.monotonic()
    rc = 0
    if args.what in ("crash", "all"):
        rc |= crash(args.trials, [o for o in args.ops.split(",") if o], engines, seed)
    if args.what in ("load", "all"):
        rc |= load(args.seconds, engines, seed)
    print(f"total {time.monotonic() - start:.0f} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
