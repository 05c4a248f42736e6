"""get+put of a layer against the floor: the same mount and umount issued directly.

Issue 2's speed goals, as ratios measured in one run on a loop-mounted ext4:

- overlay, a layer with one parent: ``Driver.get`` + ``Driver.put`` in a loop against the
  same overlay mount made with raw syscalls in this process — the new mount API
  (``fsopen``/``fsconfig``/``fsmount``/``move_mount``) the driver uses here, and plain
  ``mount(2)`` with the joined options — each followed by ``umount2``. Goal <= 1.5x.
- fuse-overlayfs, one parent: against running ``fuse-overlayfs -o … TARGET`` directly
  and ``umount2``. Goal <= 1.2x.
- a 125-layer chain (the top layer over 125 lowers): against the same raw mount of the
  125 lowers. Goal <= 2x (overlay; the fuse-overlayfs figure is reported alongside).

Run as root: ``python3 -m bench.getput [--reps N] [--scale F] [--no-profile]``.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import aufs
from aufs._sys import libc
from aufs.driver import Driver
from aufs.union.base import Branches, MountSpec
from aufs.union.fuse_overlayfs import FuseOverlayEngine, fuse_specs
from aufs.union.overlay import (
    NeedsShortNamesError,
    OverlayCaps,
    OverlayEngine,
    overlay_specs,
)
from bench.common import (
    Job,
    Report,
    compare_interleaved,
    loop,
    loop_ext4,
    main_guard,
    require_root,
)
from bench.profiling import profile

GOALS = {"overlay": 1.5, "fuse-overlayfs": 1.2, "chain": 2.0}
FILES_PER_LAYER = 8


def layer_id(n: int) -> str:
    """A Docker-looking id (64 hex digits), so that paths have their real length."""
    return hashlib.sha256(f"bench-layer-{n}".encode()).hexdigest()


def populate(directory: str, tag: str) -> None:
    os.makedirs(os.path.join(directory, "etc"), exist_ok=True)
    for i in range(FILES_PER_LAYER):
        with open(os.path.join(directory, "etc", f"{tag}-{i}.conf"), "wb") as f:
            f.write(b"x" * (100 * i))


@dataclass(frozen=True, slots=True)
class Stack:
    driver: Driver
    top: str
    branches: Branches


def build_stack(root: str, engine: str, lowers: int) -> Stack:
    """A store at ``root`` using ``engine`` with a chain of ``lowers`` parents under ``top``."""
    d = aufs.init(root, [f"aufs.engine={engine}"])
    parent = ""
    for n in range(lowers + 1):
        lid = layer_id(n)
        d.create(lid, parent)
        populate(d.layout.diff(lid), f"l{n}")
        parent = lid
    top = parent
    b = d._branches(top, d.parents(top))  # what the driver mounts, for the floors
    d.get(top)  # the first mount makes the work dir that the floors' mounts need too
    d.put(top)
    return Stack(d, top, b)


# -- the floors: the same mount, issued directly ---------------------------------------------


class FsconfigMount:
    """fsopen/fsconfig/fsmount/move_mount of ``spec``, arguments encoded once, then umount2."""

    def __init__(self, spec: MountSpec) -> None:
        self.fstype = spec.fstype.encode()
        self.target = os.fsencode(spec.target)
        self.params: list[tuple[bytes, ctypes.c_char_p | None]] = [
            (b"source", ctypes.c_char_p(spec.source.encode()))]
        for opt in spec.options:
            key, sep, value = opt.partition("=")
            self.params.append((key.encode(), ctypes.c_char_p(os.fsencode(value))
                                if sep else None))

    def mount(self) -> None:
        fsfd = libc.syscall("fsopen", libc.SYS_FSOPEN, self.fstype, libc.FSOPEN_CLOEXEC)
        try:
            for key, value in self.params:
                if value is None:
                    libc.syscall("fsconfig", libc.SYS_FSCONFIG, fsfd, libc.FSCONFIG_SET_FLAG,
                                 key, None, 0)
                else:
                    libc.syscall("fsconfig", libc.SYS_FSCONFIG, fsfd, libc.FSCONFIG_SET_STRING,
                                 key, value, 0)
            libc.syscall("fsconfig", libc.SYS_FSCONFIG, fsfd, libc.FSCONFIG_CMD_CREATE,
                         None, None, 0)
            mfd = libc.syscall("fsmount", libc.SYS_FSMOUNT, fsfd, libc.FSMOUNT_CLOEXEC, 0)
            try:
                libc.syscall("move_mount", libc.SYS_MOVE_MOUNT, mfd, b"", libc.AT_FDCWD,
                             self.target, libc.MOVE_MOUNT_F_EMPTY_PATH)
            finally:
                os.close(mfd)
        finally:
            os.close(fsfd)

    def cycle(self) -> None:
        self.mount()
        libc.umount2(self.target.decode(), 0)


class Mount2:
    """mount(2) of ``spec`` with its joined options, then umount2."""

    def __init__(self, spec: MountSpec) -> None:
        self.spec = spec
        self.data = spec.data

    def cycle(self) -> None:
        libc.mount(self.spec.source, self.spec.target, self.spec.fstype, 0, self.data)
        libc.umount2(self.spec.target, 0)


class FuseExec:
    """fuse-overlayfs started directly (as a user would from a shell), then umount2."""

    def __init__(self, spec: MountSpec) -> None:
        # As a user would: without the driver's -f, the program daemonizes itself.
        self.argv = [a for a in spec.argv if a != "-f"]
        self.target = spec.target

    def cycle(self) -> None:
        subprocess.run(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        libc.umount2(self.target, 0)


# -- the cases -------------------------------------------------------------------------------


def driver_cycle(stack: Stack) -> Callable[[], None]:
    d, top = stack.driver, stack.top

    def cycle() -> None:
        d.get(top)
        d.put(top)
    return cycle


def overlay_floors(stack: Stack) -> list[tuple[str, Callable[[], None]]]:
    engine = stack.driver.engine
    assert isinstance(engine, OverlayEngine)
    floors: list[tuple[str, Callable[[], None]]] = []
    if engine.caps.new_api:
        spec = overlay_specs(stack.branches, engine.caps)[0]
        floors.append(("raw fsconfig+umount2", FsconfigMount(spec).cycle))
    old = OverlayCaps(new_api=False, extra_options=engine.caps.extra_options,
                      page_size=engine.caps.page_size)
    try:
        spec = overlay_specs(stack.branches, old)[0]
    except NeedsShortNamesError:
        pass  # over a page: mount(2) cannot take these paths as they are
    else:
        floors.append(("raw mount(2)+umount2", Mount2(spec).cycle))
    return floors


def fuse_floors(stack: Stack) -> list[tuple[str, Callable[[], None]]]:
    engine = stack.driver.engine
    assert isinstance(engine, FuseOverlayEngine)
    spec = fuse_specs(stack.branches, engine.caps)[0]
    return [("exec fuse-overlayfs+umount2", FuseExec(spec).cycle)]


def run_case(report: Report, mnt: str, *, key: str, engine: str, lowers: int, iters: int,
             reps: int, goal: float, profile_it: bool) -> None:
    stack = build_stack(os.path.join(mnt, f"store-{key}"), engine, lowers)
    try:
        subject = Job("driver get+put", driver_cycle(stack))
        floors = (overlay_floors(stack) if engine == "overlay" else fuse_floors(stack))
        for i, (label, floor) in enumerate(floors):
            name = f"{key}" if i == 0 else f"{key} (vs {label.split('+')[0]})"
            report.add(compare_interleaved(
                name, subject, Job(label, floor), rounds=reps, pairs=iters,
                goal=goal if i == 0 else None,
                note=f"{lowers} lower layer(s), engine {engine}; {iters} interleaved "
                     "cycles a round"))
        if profile_it:
            for by in ("self", "cum"):
                report.profiles[f"{key}: driver get+put, by {by} time"] = profile(
                    loop(driver_cycle(stack), iters), top=14, by=by)
    finally:
        stack.driver.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.getput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9, help="rounds per ratio (median)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the get+put cycles per round")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile pass")
    parser.add_argument("--only", choices=("overlay", "fuse"), help="one engine only")
    args = parser.parse_args(argv)
    require_root()

    def n(base: int) -> int:
        return max(1, int(base * args.scale))

    report = Report("getput" if args.only is None else f"getput-{args.only}")
    prof = not args.no_profile
    with loop_ext4(1 << 30, label="aufs-bench-getput") as mnt:
        if args.only in (None, "overlay"):
            run_case(report, mnt, key="overlay", engine="overlay", lowers=1, iters=n(60),
                     reps=args.reps, goal=GOALS["overlay"], profile_it=prof)
            run_case(report, mnt, key="overlay chain-125", engine="overlay", lowers=125,
                     iters=n(30), reps=args.reps, goal=GOALS["chain"], profile_it=prof)
        if args.only in (None, "fuse"):
            run_case(report, mnt, key="fuse-overlayfs", engine="fuse-overlayfs", lowers=1,
                     iters=n(16), reps=args.reps, goal=GOALS["fuse-overlayfs"],
                     profile_it=prof)
            run_case(report, mnt, key="fuse-overlayfs chain-125", engine="fuse-overlayfs",
                     lowers=125, iters=n(8), reps=args.reps, goal=GOALS["chain"],
                     profile_it=prof)
    report.finish()
    return 0 if all(r.met is not False for r in report.ratios) else 1


if __name__ == "__main__":
    main_guard(main)
