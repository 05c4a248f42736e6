"""Layer tarballs with whiteouts, and change detection (Docker's ``pkg/archive``).

This package only re-exports: the types are in :mod:`aufs.archive.types` (errors in
:mod:`aufs.errors`), the work in the submodules. No submodule imports this package.
"""

from __future__ import annotations

from aufs.archive.apply import extract_into_dir
from aufs.archive.changes import diff_size, layer_changes
from aufs.archive.export import export_changes, export_dir, export_layer
from aufs.archive.treediff import changes_dirs, changes_size
from aufs.archive.types import ArchiveError, BreakoutError, Change, ChangeKind

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
