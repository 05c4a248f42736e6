"""What every union engine shares: the branches of a union, and the engine protocol.

Engines *build* :class:`~aufs._sys.mountspec.MountSpec` values (the mount as data,
defined on the system floor and re-exported here) with pure functions; only
:mod:`aufs._sys.mount` executes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aufs._sys.mountspec import MountMethod, MountSpec
from aufs.errors import ChainTooLongError

__all__ = [
    "Branches",
    "ChainTooLongError",
    "MountMethod",
    "MountSpec",
    "UnionEngine",
    "escape_overlay_path",
    "joined_length",
    "selinux_option",
]


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

    @property
    def dirperm1(self) -> bool:
        """AUFS's ``dirperm1`` is in use (``Dirperm1 Supported`` of ``status()``)."""
        ...

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        """The mounts that build ``branches``; pure, no system calls."""
        ...

    def mount(self, branches: Branches) -> None:
        ...

    def unmount(self, target: str, rw: str | None = None, lowers: Sequence[str] = ()) -> None:
        """Unmount ``target``; ``rw``, if given, is the layer's rw branch, to be put back
        into the store's whiteout format once nothing writes to it any more, over the
        read-only ``lowers`` (nearest first)."""
        ...

    def matches(self, branches: Branches) -> bool:
        """Is the union found mounted at ``branches.target`` built of exactly these
        branches? (An engine that mounts in several calls can be killed half way.)"""
        ...

    def describe(self) -> list[tuple[str, str]]:
        """The engine's own rows of ``Driver.status()`` (after the driver's)."""
        ...

    def forget(self, rw: str) -> None:
        """The layer whose rw branch is ``rw`` is being removed: drop what the engine
        keeps for it in the store (the store lock is held)."""
        ...

    def clear(self, target: str) -> None:
        """A ``get`` died while mounting ``target`` (its reference count file says so) and
        the store lock is held: stop whatever it left still starting there (a FUSE daemon
        mounts on its own a moment later), so that no union appears behind the driver's
        back after a ``put`` or ``cleanup``, or on top of a new ``get``."""
        ...


def escape_overlay_path(path: str) -> str:
    """Escape the characters overlayfs (and fuse-overlayfs) split option values on."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def selinux_option(label: str) -> tuple[str, ...]:
    return (f'context="{label}"',) if label else ()


def joined_length(options: Sequence[str]) -> int:
    return sum(len(o) for o in options) + max(len(options) - 1, 0)
