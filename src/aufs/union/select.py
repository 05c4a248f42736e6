"""``aufs.engine=auto``: try the engines in order by real probes; keep every reason."""

from __future__ import annotations

from collections.abc import Callable

from aufs.errors import AufsNotSupportedError, IncompatibleFSError, NotSupportedError
from aufs.store.layout import Layout
from aufs.union import aufs as aufs_engine
from aufs.union import fuse_overlayfs, overlay
from aufs.union.base import UnionEngine
from aufs.whiteout import WhiteoutFormat, get_format

ORDER = ("aufs", "overlay", "fuse-overlayfs")
# What each engine reads and writes, from the engine classes themselves.
_CLASSES: dict[str, type[UnionEngine]] = {
    "aufs": aufs_engine.AufsEngine, "overlay": overlay.OverlayEngine,
    "fuse-overlayfs": fuse_overlayfs.FuseOverlayEngine}
READS = {name: cls.reads for name, cls in _CLASSES.items()}
NATIVE = {name: cls.native for name, cls in _CLASSES.items()}


# Every engine's probe: (layout, backing filesystem magic, the store's whiteout format).
Probe = Callable[[Layout, int, WhiteoutFormat], UnionEngine]
PROBES: dict[str, Probe] = {"aufs": aufs_engine.probe, "overlay": overlay.probe,
                            "fuse-overlayfs": fuse_overlayfs.probe}


def probe_one(name: str, layout: Layout, magic: int, store_format: str) -> UnionEngine:
    try:
        probe = PROBES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}") from None
    return probe(layout, magic, get_format(store_format))


def choose(requested: str, layout: Layout, magic: int,
           store_format: str | None) -> tuple[UnionEngine, str]:
    """Return the engine and the whiteout format the store keeps.

    ``store_format`` is None for a new store (the engine's native format is used).
    """
    if requested != "auto":
        if store_format is not None and store_format not in READS[requested]:
            # A kernel without AUFS is the first reason whatever the store holds: forced
            # aufs there raises AufsNotSupportedError with its fixed message (API.md).
            if requested == "aufs" and not aufs_engine.supports_aufs():
                raise AufsNotSupportedError()
            raise NotSupportedError(
                f"engine {requested} cannot read this store's {store_format} whiteouts; "
                f"convert the store first (aufs convert --to {NATIVE[requested]}) "
                f"or use aufs.engine=auto")
        fmt = store_format or NATIVE[requested]
        return probe_one(requested, layout, magic, fmt), fmt
    reasons: list[str] = []
    incompatible = True
    for name in ORDER:
        if store_format is not None and store_format not in READS[name]:
            reasons.append(f"{name}: cannot read {store_format} whiteouts")
            continue
        fmt = store_format or NATIVE[name]
        try:
            return probe_one(name, layout, magic, fmt), fmt
        except IncompatibleFSError as exc:
            reasons.append(f"{name}: {exc}")
        except NotSupportedError as exc:
            incompatible = False
            reasons.append(f"{name}: {exc}")
    msg = "no union engine works here (" + "; ".join(reasons) + ")"
    if incompatible:
        raise IncompatibleFSError(msg)
    raise NotSupportedError(msg)
