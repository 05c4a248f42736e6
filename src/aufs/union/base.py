"""What every union engine shares: the mount as data, and the engine protocol.

A :class:`MountSpec` is a serialized mount call (type, source, target, options,
flags, and how to issue it). Engines *build* specs with pure functions; only
:mod:`aufs._sys.mount` executes them. Specs print themselves in every mount error.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aufs.graphdriver import DriverError


class MountMethod(enum.Enum):
    MOUNT = "mount"        # one mount(2), options joined with ","
    FSCONFIG = "fsconfig"  # the new mount API: one fsconfig() per option (no page limit)
    HELPER = "helper"      # run argv (a FUSE daemon, foreground) until the target is mounted


class ChainTooLongError(DriverError, ValueError):
    """The layer has more ancestors than the engine can stack."""


@dataclass(frozen=True, slots=True)
class MountSpec:
    fstype: str
    source: str
    target: str
    options: tuple[str, ...] = ()
    flags: int = 0
    method: MountMethod = MountMethod.MOUNT
    argv: tuple[str, ...] = ()
    cwd: str | None = None  # MOUNT with paths relative to this directory

    @property
    def data(self) -> str:
        return ",".join(self.options)

    def __str__(self) -> str:
        if self.method is MountMethod.HELPER:
            return " ".join(self.argv)
        where = f" (in {self.cwd})" if self.cwd else ""
        flags = f" flags=0x{self.flags:x}" if self.flags else ""
        data = self.data
        if len(data) > 300:
            data = f"{data[:140]}…{data[-140:]} ({len(data)} bytes)"
        head = f"{self.method.value} -t {self.fstype} {self.source} {self.target}"
        return f"{head} -o {data}{flags}{where}"


@dataclass(frozen=True, slots=True)
class Branches:
    """The union of one layer: its rw branch over its parents' diffs, nearest first."""

    target: str
    rw: str
    lowers: tuple[str, ...]
    work: str = ""            # overlayfs work dir (same filesystem as rw)
    label: str = ""           # SELinux mount label ("" for none)


class UnionEngine(Protocol):
    """One way of mounting a union. Small on purpose: probe, specs, mount, unmount."""

    name: str
    reads: frozenset[str]   # whiteout formats the engine understands in its branches
    native: str             # the whiteout format a store of its own keeps on disk

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        """The mounts that build ``branches``; pure, no system calls."""
        ...

    def mount(self, branches: Branches) -> None:
        ...

    def unmount(self, target: str, rw: str | None = None) -> None:
        """Unmount ``target``; ``rw``, if given, is the layer's rw branch, to be put back
        into the store's whiteout format once nothing writes to it any more."""
        ...

    def describe(self) -> list[tuple[str, str]]:
        """Rows for ``Driver.status()``."""
        ...

    def forget(self, rw: str) -> None:
        """The layer whose rw branch is ``rw`` is being removed: drop what the engine
        keeps for it in the store (the store lock is held)."""
        ...


def escape_overlay_path(path: str) -> str:
    """Escape the characters overlayfs (and fuse-overlayfs) split option values on."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def selinux_option(label: str) -> tuple[str, ...]:
    return (f'context="{label}"',) if label else ()


def joined_length(options: Sequence[str]) -> int:
    return sum(len(o) for o in options) + max(len(options) - 1, 0)
