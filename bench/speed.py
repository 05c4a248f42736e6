"""Everyday speed (issue 17): start-up, warm diffs, export, and cost as the store grows.

Every row is a ratio against a reference run in the same process tree, on the same
loop-mounted ext4, in the same run (see bench/README.md):

======================  ====================================================  ========
row                     reference                                             goal
======================  ====================================================  ========
startup: aufs ls        ``python -c pass`` (same interpreter and environment)  <= 50 ms
diff warm | cat         ``tar -cf - DIR | cat``, warm caches                    <= 1.0x
diff cold               the same, cold caches                                   <= 1.0x
======================  ====================================================  ========

Whole-process rows run the package from bytecode, as an installed one does (the
sources are compiled first; ``PYTHONDONTWRITEBYTECODE`` is dropped for the children).

Run as root: ``python3 -m bench.speed [--reps N] [--only startup|diff ...]``; ``big``
(a 2 GiB layer of large files, ``--big-gib``) is one of the jobs.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence

import aufs
from aufs.archive.stream import write_stream
from bench import corpus
from bench.child import run_child
from bench.common import (
    Job,
    Report,
    compare,
    compare_interleaved,
    loop_ext4,
    main_guard,
    require_root,
)
from bench.getput import build_stack, driver_cycle, layer_id, overlay_floors, populate

# The budget, 50 ms where `python -c pass` took 19 ms, as a ratio that travels
# between machines (and loads): 50 / 19.
STARTUP_RATIO_GOAL = 50.0 / 19.0
STARTUP_PAIRS = 10
JOBS = ("startup", "diff", "export", "scale", "many", "big")
MANY_FILES = 200_000
BIG_GIB = 2.0
BIG_STORE = 10_000
FLAT_GOAL = 1.10  # "not slower": the 10,000-layer store within the noise of the 10-layer one
DEEP = 100
DEEP_GOAL = 1.5
LS_BUDGET_S = 1.0
DIFF_GOAL = 1.0
READ_CHUNK = 1 << 20  # the read row's read size, and its pipe's
RSS_GOAL_MIB = 64.0


def _child_env() -> dict[str, str]:
    """This checkout's ``aufs`` for children, read from bytecode as an installed package
    is (the sources compiled once here)."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(aufs.__file__)))
    compileall.compile_dir(os.path.join(src, "aufs"), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = ":".join(dict.fromkeys(
        [src, *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]))
    return env


def _process(argv: Sequence[str], env: dict[str, str]) -> Job:
    def run() -> None:
        subprocess.run(list(argv), env=env, stdout=subprocess.DEVNULL, check=True)
    return Job(" ".join(argv), run)


def bench_startup(mnt: str, report: Report, reps: int) -> None:
    """``aufs ls`` of a 10-layer store and ``aufs --version``, whole process."""
    root = os.path.join(mnt, "store10")
    d = aufs.init(root)
    parent = ""
    for n in range(10):
        lid = layer_id(n)
        d.create(lid, parent)
        populate(d.layout.diff(lid), f"l{n}")
        parent = lid
    d.cleanup()
    env = _child_env()
    py = sys.executable
    ref = _process([py, "-c", "pass"], env)
    ref = Job("python -c pass", ref.run)
    for name, argv in (("startup: aufs ls (10 layers)", [py, "-m", "aufs", "--root", root, "ls"]),
                       ("startup: aufs --version", [py, "-m", "aufs", "--version"])):
        subject = _process(argv, env)
        r = report.add(compare_interleaved(
            name, Job(name.split(": ")[1], subject.run), ref, rounds=reps,
            pairs=STARTUP_PAIRS, goal=STARTUP_RATIO_GOAL if "ls" in name else None,
            note="whole process, from bytecode"))
        per_run = [s / STARTUP_PAIRS * 1000 for s in r.subject_s]
        floor = [s / STARTUP_PAIRS * 1000 for s in r.reference_s]
        report.value(f"{name}, ms", statistics.median(per_run), "ms",
                     note=f"min {min(per_run):.1f}, max {max(per_run):.1f}; python -c pass "
                          f"{statistics.median(floor):.1f} ms")


def _into_cat(write: Callable[[int], object], *, pipe_size: int = 0) -> None:
    """``write(fd)`` into a pipe read by ``cat``; ``pipe_size``: grow the pipe to that."""
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert cat.stdin is not None
    try:
        if pipe_size:
            fcntl.fcntl(cat.stdin.fileno(), fcntl.F_SETPIPE_SZ, pipe_size)
        write(cat.stdin.fileno())
    finally:
        cat.stdin.close()
        cat.wait()


def _base_store(mnt: str, root: str, tar_name: str) -> aufs.Driver:
    """A store at ``root`` whose layer ``base`` is the corpus's base layer, applied from a
    copy ``tar_name`` of its tarball on the bench filesystem (kept); released."""
    tarball = os.path.join(mnt, tar_name)
    shutil.copyfile(corpus.base_tarball(), tarball)
    d = aufs.init(root)
    d.create("base")
    with open(tarball, "rb") as f:
        d.apply_diff("base", "", f)
    d.cleanup()
    return d


def _warm_diff_jobs(d: aufs.Driver, name: str) -> tuple[Job, Callable[[], None]]:
    """GNU tar of the layer's directory into ``| cat``, and ``Driver.diff`` written into a
    pipe read by ``cat`` (``write_stream``): the pair every warm diff row compares."""
    layer = d.layout.diff(name)
    tar = Job("tar -cf - | cat", lambda: subprocess.run(
        ["sh", "-c", f"tar -cf - -C '{layer}' . | cat >/dev/null"], check=True))

    def fd_path() -> None:
        with d.diff(name) as stream:
            _into_cat(lambda fd: write_stream(stream, fd))
    return tar, fd_path


def bench_diff(mnt: str, report: Report, reps: int) -> None:
    """Warm and cold diffs of the corpus's base layer, against GNU tar into ``| cat``."""
    root = os.path.join(mnt, "store-diff")
    d = _base_store(mnt, root, "base.tar")
    env = _child_env()
    tar, fd_path = _warm_diff_jobs(d, "base")

    def read_path() -> None:
        # A MiB written at a time into a pipe of 64 KiB blocks the writer at every 64 KiB
        # (about 3,000 waits for cat here, each a wake-up of the other core), where GNU
        # tar's 10 KiB writes never wait (6-9 switches): the row would time the
        # scheduler, not the read path. The pipe holds a MiB, as write_into makes it.
        def copy(fd: int) -> None:
            with d.diff("base") as stream:
                while chunk := stream.read(READ_CHUNK):
                    _write_all(fd, chunk)
        _into_cat(copy, pipe_size=READ_CHUNK)

    whole = Job("aufs diff ID | cat", lambda: subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -m aufs --root '{root}' diff base | cat >/dev/null"],
        env=env, check=True))
    report.add(compare("diff warm: write_into | cat (in-process)",
                       Job("Driver.diff + write_stream", fd_path), tar, reps=reps))
    report.add(compare("diff warm: read(1 MiB) | cat (in-process)",
                       Job("Driver.diff + read", read_path), tar, reps=reps))
    report.add(compare("diff warm: aufs diff | cat", whole, tar, reps=reps, goal=DIFF_GOAL,
                       note="whole process, warm caches"))
    report.add(compare("diff cold: aufs diff | cat", whole, tar, reps=reps, cold=True,
                       goal=DIFF_GOAL, note="whole process, caches dropped before each run"))


def bench_export(mnt: str, report: Report, reps: int) -> None:
    """``aufs export`` (OCI, gzip level 6 / zstd / none) of the corpus's base layer against
    ``skopeo copy docker-archive: oci-archive:`` of the same image; peak RSS."""
    root = os.path.join(mnt, "store-export")
    _base_store(mnt, root, "export-base.tar")
    os.unlink(os.path.join(mnt, "export-base.tar"))
    env = _child_env()
    archive = os.path.join(mnt, "image-docker.tar")
    subprocess.run([sys.executable, "-m", "aufs", "--root", root, "export", "base",
                    "--format", "docker-archive", "-o", archive], env=env, check=True)
    out = os.path.join(mnt, "out.tar")

    def gone() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)

    skopeo = Job("skopeo copy docker-archive: oci-archive:", lambda: subprocess.run(
        ["skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci-archive:{out}"],
        check=True, stdout=subprocess.DEVNULL), setup=gone, teardown=gone)
    rss: dict[str, list[float]] = {}
    for kind in ("gzip", "zstd", "none"):
        def run(kind: str = kind) -> None:
            proc = subprocess.run(
                ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "aufs", "--root", root,
                 "export", "base", "-o", out, "--compress", kind],
                env=env, check=True, stderr=subprocess.PIPE, text=True)
            rss.setdefault(kind, []).append(int(proc.stderr.split()[-1]) / 1024)
        report.add(compare(f"export --compress {kind}",
                           Job(f"aufs export --compress {kind}", run, setup=gone, teardown=gone),
                           skopeo, reps=reps, goal=DIFF_GOAL if kind == "gzip" else None,
                           note="whole process; OCI archive of the 200 MB base layer"))
    for kind, peaks in rss.items():
        report.value(f"peak RSS, export --compress {kind}", max(peaks), "MiB",
                     goal=RSS_GOAL_MIB, note="/usr/bin/time %M, the largest of the runs")
    # the gzip blob's size against skopeo's (pgzip at its default level): no speed
    # bought with a bigger blob
    sizes = {}
    for label, job in (("aufs", "gzip"), ("skopeo", None)):
        gone()
        if job is None:
            skopeo.run()
        else:
            subprocess.run([sys.executable, "-m", "aufs", "--root", root, "export", "base",
                            "-o", out, "--compress", job], env=env, check=True)
        with tarfile.open(out) as tar:
            sizes[label] = max(m.size for m in tar.getmembers()) / 1e6
    gone()
    report.value("export gzip: the layer blob", sizes["aufs"], "MB", goal=sizes["skopeo"],
                 note=f"skopeo's: {sizes['skopeo']:.2f} MB")


def _store(root: str, count: int, depth: int = 10) -> aufs.Driver:
    """``count`` layers with Docker-length ids, in chains ``depth`` deep."""
    d = aufs.init(root)
    parent = ""
    for n in range(count):
        lid = layer_id(n)
        d.create(lid, parent if n % depth else "")
        parent = lid
    return d


def bench_scale(mnt: str, report: Report, reps: int, big: int) -> None:
    """Cost that stays flat: one layer's create/remove/exists/get in a store of ``big``
    layers against the same in a 10-layer store; ``aufs ls`` of the big store; get+put
    of a layer 100 deep against the raw mount syscalls."""
    small = _store(os.path.join(mnt, "store-10"), 10)
    large = _store(os.path.join(mnt, "store-big"), big)
    names = iter(range(1 << 30))

    def create_remove(d: aufs.Driver) -> Callable[[], None]:
        parent = layer_id(5)  # a layer in the middle of the first chain, in both stores

        def run() -> None:
            lid = f"new-{next(names)}"
            d.create(lid, parent)
            d.remove(lid)
        return run

    def exists(d: aufs.Driver) -> Callable[[], object]:
        return lambda: d.exists(layer_id(7))

    def get_put(d: aufs.Driver) -> Callable[[], None]:
        lid = layer_id(9)  # 9 parents below it, in both stores

        def run() -> None:
            d.get(lid)
            d.put(lid)
        return run

    cases: list[tuple[str, Callable[[aufs.Driver], Callable[[], object]], int]] = [
        ("create+remove", create_remove, 20), ("exists", exists, 200), ("get+put", get_put, 20)]
    for label, make, pairs in cases:
        report.add(compare_interleaved(
            f"{big} layers: {label}", Job(f"{big}-layer store", make(large)),
            Job("10-layer store", make(small)), rounds=reps, pairs=pairs, goal=FLAT_GOAL,
            note=f"one layer; {pairs} interleaved calls a round"))
    large.cleanup()
    small.cleanup()
    env = _child_env()
    argv = [sys.executable, "-m", "aufs", "--root", large.root, "ls"]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    report.value(f"aufs ls, {big} layers, s", statistics.median(times), "s", goal=LS_BUDGET_S,
                 note=f"whole process; min {min(times):.2f}, max {max(times):.2f}")
    stack = build_stack(os.path.join(mnt, "store-deep"), "overlay", DEEP)
    try:
        floors = overlay_floors(stack)
        label, floor = floors[0]
        report.add(compare_interleaved(
            f"get+put {DEEP} deep", Job("driver get+put", driver_cycle(stack)),
            Job(label, floor), rounds=reps, pairs=20, goal=DEEP_GOAL,
            note=f"overlay, {DEEP} lower layers"))
    finally:
        stack.driver.cleanup()


def _apply_vs_tar(mnt: str, report: Report, d: aufs.Driver, tarball: str, name: str,
                  prefix: str, reps: int, note: str) -> None:
    """``Driver.apply_diff`` of ``tarball`` into a new layer against ``tar -xf`` into a
    new directory, caches cold; setup and cleanup outside the timed part."""
    ids = iter(range(1 << 30))
    state: dict[str, str] = {}

    def new_layer() -> None:
        state["id"] = f"{prefix}-{next(ids)}"
        d.create(state["id"])

    def apply() -> None:
        with open(tarball, "rb") as f:
            d.apply_diff(state["id"], "", f)

    def tar_x_setup() -> None:
        state["dir"] = os.path.join(mnt, f"{prefix}-x-{next(ids)}")
        os.mkdir(state["dir"])

    report.add(compare(name, Job("Driver.apply_diff", apply, new_layer,
                                 lambda: d.remove(state["id"])),
                       Job("tar -xf", lambda: subprocess.run(
                           ["tar", "-xf", tarball, "-C", state["dir"]], check=True),
                           tar_x_setup, lambda: shutil.rmtree(state["dir"])),
                       reps=reps, cold=True, note=note))


def bench_many(mnt: str, report: Report, reps: int, files: int) -> None:
    """A layer of ``files`` files (100 directories): apply, diff and changes against GNU
    tar and find, and the peak RSS of each in a child."""
    src = os.path.join(mnt, "many-src")
    per_dir = max(1, files // 100)
    for n in range(files):
        d_path = os.path.join(src, f"d{n // per_dir:03d}")
        if n % per_dir == 0:
            os.makedirs(d_path)
        fd = os.open(os.path.join(d_path, f"file-{n:06d}"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * (n % 700))
        os.close(fd)
    tarball = os.path.join(mnt, "many.tar")
    subprocess.run(["tar", "-cf", tarball, "--numeric-owner", "-C", src, "."], check=True)
    shutil.rmtree(src)
    root = os.path.join(mnt, "store-many")
    d = aufs.init(root)
    engine = d.engine.name
    os.environ.update(_child_env())
    label = f"{files} files"
    _apply_vs_tar(mnt, report, d, tarball, f"{label}: apply_diff", "many", reps,
                  "cold caches")
    d.create("many")
    # Piped through cat, as bench.archive's memory test feeds its child (a pipe, not a file).
    cat = subprocess.Popen(["cat", tarball], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    try:
        applied = run_child([sys.executable, "-m", "bench.child", "apply", root, engine, "many"],
                            stdin=cat.stdout.fileno())
    finally:
        cat.stdout.close()
        cat.wait()
    if applied.returncode != 0:
        raise RuntimeError(f"apply of {label} failed: {applied.stderr[-800:]}")
    tar, fd_path = _warm_diff_jobs(d, "many")
    layer = d.layout.diff("many")
    report.add(compare(f"{label}: diff warm, write_into | cat", Job("Driver.diff", fd_path), tar,
                       reps=reps, note="in-process, warm caches"))
    find = Job("find -printf", lambda: subprocess.run(
        ["find", layer, "-printf", "%p %s %T@\\n"], stdout=subprocess.DEVNULL, check=True))
    report.add(compare(f"{label}: changes", Job("Driver.changes", lambda: d.changes("many")),
                       find, reps=reps, note="in-process, warm; every file is an ADD"))
    for job, result in (("apply_diff", applied),
                        ("diff", run_child([sys.executable, "-m", "bench.child", "diff", root,
                                            engine, "many"])),
                        ("changes", run_child([sys.executable, "-m", "bench.child", "changes",
                                               root, engine, "many"]))):
        kib = result.reported("VmHWM")
        if result.returncode != 0 or kib is None:
            report.note(f"{label}: {job} child failed: {result.stderr[-500:]}")
            continue
        report.value(f"peak RSS, {job} of {label}", kib / 1024, "MiB", goal=RSS_GOAL_MIB,
                     note="child process")
    d.cleanup()


def bench_big(mnt: str, report: Report, reps: int, gib: float) -> None:
    """A layer of ``gib`` GiB in a few large files (and 1 MiB ones, bench.corpus): apply
    against ``tar -xf`` and diff against ``tar -cf - | cat``, caches cold, and the peak
    RSS of each in a child."""
    src = os.path.join(mnt, "big-src")
    count = corpus.write_big_tree(src, int(gib * (1 << 30)))
    tarball = os.path.join(mnt, "big.tar")
    subprocess.run(["tar", "-cf", tarball, "--numeric-owner", "-C", src, "."], check=True)
    shutil.rmtree(src)
    root = os.path.join(mnt, "store-big-layer")
    d = aufs.init(root)
    engine = d.engine.name
    os.environ.update(_child_env())
    label = f"{gib:g} GiB layer"
    note = f"{count} files, cold caches"
    _apply_vs_tar(mnt, report, d, tarball, f"{label}: apply_diff", "big", reps, note)
    d.create("big")
    with open(tarball, "rb") as f:
        d.apply_diff("big", "", f)
    os.unlink(tarball)  # room on the filesystem; the layer is what diff reads
    tar, fd_path = _warm_diff_jobs(d, "big")
    report.add(compare(f"{label}: diff, write_into | cat", Job("Driver.diff", fd_path), tar,
                       reps=reps, cold=True, note=note))
    d.create("big-piped")
    cat = subprocess.Popen(["tar", "-cf", "-", "--numeric-owner", "-C", d.layout.diff("big"),
                            "."], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    try:
        applied = run_child([sys.executable, "-m", "bench.child", "apply", root, engine,
                             "big-piped"], stdin=cat.stdout.fileno())
    finally:
        cat.stdout.close()
        cat.wait()
    d.remove("big-piped")
    for job, result in (("apply_diff (piped)", applied),
                        ("diff", run_child([sys.executable, "-m", "bench.child", "diff", root,
                                            engine, "big"]))):
        kib = result.reported("VmHWM")
        if result.returncode != 0 or kib is None:
            report.note(f"{label}: {job} child failed: {result.stderr[-500:]}")
            continue
        report.value(f"peak RSS, {job} of {label}", kib / 1024, "MiB", goal=RSS_GOAL_MIB,
                     note="child process")
    d.cleanup()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9, help="repetitions per ratio (median)")
    parser.add_argument("--only", choices=JOBS, action="append",
                        help="run only these jobs (repeatable)")
    parser.add_argument("--files", type=int, default=MANY_FILES,
                        help="files in the layer of the many job")
    parser.add_argument("--layers", type=int, default=BIG_STORE,
                        help="layers in the big store of the scale job")
    parser.add_argument("--big-gib", type=float, default=BIG_GIB,
                        help="size of the layer of the big job (large files), GiB")
    args = parser.parse_args(argv)
    require_root()
    jobs = set(args.only or JOBS)
    report = Report("speed")
    with loop_ext4(12 << 30, label="aufs-bench-speed") as mnt:  # inodes for 200,000 files x 3
        if "startup" in jobs:
            bench_startup(mnt, report, args.reps)
        if "diff" in jobs:
            bench_diff(mnt, report, args.reps)
        if "export" in jobs:
            bench_export(mnt, report, args.reps)
        if "scale" in jobs:
            bench_scale(mnt, report, args.reps, args.layers)
        if "many" in jobs:
            bench_many(mnt, report, args.reps, args.files)
        if "big" in jobs:
            bench_big(mnt, report, args.reps, args.big_gib)
    report.finish()
    failed = any(r.met is False for r in report.ratios) or any(
        v["met"] is False for v in report.values)
    return 1 if failed else 0


if __name__ == "__main__":
    main_guard(main)
