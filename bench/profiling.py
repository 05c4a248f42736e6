"""cProfile hotspots as shares of the profiled time: where a benchmark's subject spends it."""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Hotspot:
    function: str
    calls: int
    self_share: float  # of the profiled total, time in the function itself
    cum_share: float   # ... and in everything it called


def profile(fn: Callable[[], object], *, top: int = 15, by: str = "cum") -> list[Hotspot]:
    """Run ``fn`` under cProfile; the ``top`` functions by cumulative time (``by="cum"``),
    by time in the function itself (``by="self"``) or self time summed per source file
    (``by="module"``), as shares of the profiled total."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    return hotspots(prof, top=top, by=by)


def hotspots(prof: cProfile.Profile, *, top: int = 15, by: str = "cum") -> list[Hotspot]:
    stats = pstats.Stats(prof)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total: float = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        label = f"{_short_path(filename)}:{line}({func})" if line else func
        rows.append(Hotspot(label, int(ncalls), tottime / total, cumtime / total))
    if by == "module":
        return _by_module(rows)[:top]
    if by == "self":
        rows.sort(key=lambda h: h.self_share, reverse=True)
    else:
        rows.sort(key=lambda h: h.cum_share, reverse=True)
    return rows[:top]


def _by_module(rows: list[Hotspot]) -> list[Hotspot]:
    """Self time summed per source file; C functions (system calls, builtins) on their own."""
    groups: dict[str, Hotspot] = {}
    for h in rows:
        key = _module_of(h.function)
        g = groups.get(key)
        calls = h.calls + (g.calls if g else 0)
        share = h.self_share + (g.self_share if g else 0.0)
        groups[key] = Hotspot(key, calls, share, share)
    return sorted(groups.values(), key=lambda h: h.self_share, reverse=True)


def _module_of(function: str) -> str:
    if function.startswith("<built-in method posix."):
        return "os.* system calls (posix)"
    if function.startswith("<built-in method "):
        return "C functions of " + function.split()[2].split(".")[0]
    if function.startswith("<method "):
        return "C methods of " + function.rsplit(" of ", 1)[-1].split("'")[1]
    return function.split(":")[0]


def _short_path(filename: str) -> str:
    for marker in ("/src/aufs/", "/bench/"):
        if marker in filename:
            return filename[filename.index(marker) + 1:]
    if filename.startswith(sys.prefix) or "/lib/python" in filename:
        return os.path.basename(filename)
    return filename
