"""Layer tarballs with whiteouts, and change detection (Docker's ``pkg/archive``).

This package only re-exports: the types are in :mod:`aufs.archive.types` (errors in
:mod:`aufs.errors`), the work in the submodules. No submodule imports this package.
The functions are imported on first use (PEP 562): importing any submodule runs this
file first, and that must not load all the others (``aufs ls`` needs only diff_size).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aufs.archive.types import ArchiveError, BreakoutError, ChangeKind

__all__ = [
    "ArchiveError",
    "BreakoutError",
    "Change",
    "ChangeKind",
    "changes_dirs",
    "changes_size",
    "diff_size",
    "export_changes",
    "export_dir",
    "export_layer",
    "extract_into_dir",
    "layer_changes",
]


_LAZY = {
    "Change": "aufs.archive.change",  # a dataclass: imports inspect
    "extract_into_dir": "aufs.archive.apply",
    "diff_size": "aufs.archive.changes",
    "layer_changes": "aufs.archive.changes",
    "export_changes": "aufs.archive.export",
    "export_dir": "aufs.archive.export",
    "export_layer": "aufs.archive.export",
    "changes_dirs": "aufs.archive.treediff",
    "changes_size": "aufs.archive.treediff",
}

if TYPE_CHECKING:
    from aufs.archive.apply import extract_into_dir
    from aufs.archive.change import Change
    from aufs.archive.changes import diff_size, layer_changes
    from aufs.archive.export import export_changes, export_dir, export_layer
    from aufs.archive.treediff import changes_dirs, changes_size


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aufs.archive' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
