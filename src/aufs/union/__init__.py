"""Union engines: turn a layer chain into mounts, and undo them."""

from aufs.union.base import Branches, MountMethod, MountSpec, UnionEngine

__all__ = ["Branches", "MountMethod", "MountSpec", "UnionEngine"]
