"""dockerd on the plugin against dockerd on overlay2, doing the same things in one run.

Issue 15's goals, each a ratio (plugin / overlay2) <= 1.3x:

- ``docker run --rm --network none IMG true`` (a container's whole life: create the init
  and rw layers, mount, start, stop, unmount, remove);
- ``docker build`` (classic builder, no cache) of the 3-step Dockerfile of the tests;
- ``docker commit`` of a container that wrote 50 MB (Diff out of the store, ApplyDiff of
  that tar into a new layer).

Both daemons keep their data on one loop-mounted ext4; the plugin runs as
``python -m aufs docker-plugin`` and dockerd talks to it over its unix socket, as in use.

Run as root: ``python3 -m bench.docker [--engine overlay|fuse-overlayfs] [--reps N]``.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from bench.common import BenchError, Job, Report, compare, loop, loop_ext4, main_guard
from tests import daemons
from tests.docker import kit, scenario

GOAL = 1.3
NET = ("--network", "none")


def _jobs(d: daemons.Dockerd, label: str) -> dict[str, Job]:
    built = [0]

    def build() -> None:
        built[0] += 1
        scenario.build(d, f"b{label}:{built[0]}")

    def unbuild() -> None:
        d.out("rmi", f"b{label}:{built[0]}")

    def write50() -> None:
        d.out("run", "--name", "c50", *NET, "base:1", "dd", "if=/dev/urandom", "of=/fifty",
              "bs=1M", "count=50")

    def uncommit() -> None:
        d.out("rm", "c50")
        d.out("rmi", "committed:1")

    return {
        "run": Job(label, loop(lambda: d.out("run", "--rm", *NET, "base:1", "true"), 3)),
        "build": Job(label, build, teardown=unbuild),
        "commit": Job(label, lambda: d.out("commit", "c50", "committed:1"), setup=write50,
                      teardown=uncommit),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.docker", description=__doc__)
    ap.add_argument("--engine", choices=("overlay", "fuse-overlayfs"), default="overlay")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    reason = daemons.skip_reason_docker() or kit.skip_reason_busybox()
    if reason:
        raise BenchError(reason)
    report = Report(f"docker-{args.engine}")
    rootfs = kit.rootfs_tar()
    name = kit.unique_name("aufs-bench")
    with loop_ext4(4 << 30, label="aufs-bench-docker") as mnt, contextlib.ExitStack() as stack:
        base = Path(mnt)
        stack.enter_context(kit.plugin(name, base / "plugin.log", "--engine", args.engine))
        ours = stack.enter_context(daemons.dockerd(base / "p", name, experimental=True))
        ref = stack.enter_context(daemons.dockerd(base / "o", "overlay2"))
        for d in (ours, ref):
            d.out("import", "-", "base:1", input=rootfs)
        jobs = {"plugin": _jobs(ours, "plugin"), "overlay2": _jobs(ref, "overlay2")}
        for what, reps, title in (("run", args.reps, "docker run --rm IMG true (x3)"),
                                  ("build", args.reps, "docker build, 3 RUN steps"),
                                  ("commit", args.reps, "docker commit of 50 MB")):
            report.add(compare(title, jobs["plugin"][what], jobs["overlay2"][what], reps=reps,
                               goal=GOAL, note=f"engine {args.engine}"))
    report.finish()
    return 0 if all(r.met for r in report.ratios) else 1


if __name__ == "__main__":
    main_guard(main)
