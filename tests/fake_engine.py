"""A union engine that mounts nothing and records what it is asked: driver tests without
root, without a kernel union, and without waiting for a mount.

``driver_with_fake_engine(root)`` opens a store on it the way ``aufs.init`` would (the
store's directories, its lock), but without init's private bind and engine probes.
What needs a real mount (the reference count against the mount table, a union's
view) stays with the engine tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from aufs._sys.files import ensure_dir
from aufs._sys.mountspec import MountSpec
from aufs.driver import Driver
from aufs.store.layout import Layout
from aufs.store.lock import StoreLock
from aufs.union.base import Branches
from aufs.whiteout import get_format

__all__ = ["RecordingEngine", "driver_with_fake_engine"]


@dataclass
class RecordingEngine:
    """A :class:`aufs.union.base.UnionEngine` that records its calls in :attr:`calls`."""

    name: str = "recording"
    reads: frozenset[str] = frozenset({"aufs", "overlay"})
    native: str = "aufs"
    dirperm1: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        return [MountSpec("recording", "none", branches.target,
                          (f"rw={branches.rw}", *(f"ro={p}" for p in branches.lowers)))]

    def mount(self, branches: Branches) -> None:
        self.calls.append(("mount", branches))

    def unmount(self, target: str, rw: str | None = None, lowers: Sequence[str] = ()) -> None:
        self.calls.append(("unmount", (target, rw, tuple(lowers))))

    def matches(self, branches: Branches) -> bool:
        return True

    def describe(self) -> list[tuple[str, str]]:
        return [("Recorded Calls", str(len(self.calls)))]

    def forget(self, rw: str) -> None:
        self.calls.append(("forget", rw))

    def clear(self, target: str) -> None:
        pass  # nothing ever starts behind its back


def driver_with_fake_engine(root: str | os.PathLike[str], whiteouts: str = "aufs",
                            ) -> tuple[Driver, RecordingEngine]:
    layout = Layout.at(os.path.realpath(os.fspath(root)))
    os.makedirs(layout.root, exist_ok=True)
    for d in (*layout.top_dirs(), *layout.private_dirs()):
        ensure_dir(d)
    engine = RecordingEngine()
    driver = Driver(layout, engine, get_format(whiteouts), "<unknown>",
                    StoreLock(layout.lock_file))
    return driver, engine
