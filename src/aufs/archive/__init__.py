"""Layer tarballs with whiteouts, and change detection (Docker's ``pkg/archive``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


class ArchiveError(Exception):
    """Malformed, truncated or unusable archive input."""


class BreakoutError(ArchiveError):
    """An archive entry would write, link or resolve outside the layer."""


class ChangeKind(enum.IntEnum):
    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def letter(self) -> str:
        return "CAD"[self.value]


@dataclass(frozen=True, slots=True, order=True)
class Change:
    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{self.kind.letter} {self.path}"


# Tar export and change detection of plain directories (need Change, defined above).
from aufs.archive.apply import extract_into_dir  # noqa: E402
from aufs.archive.changes import diff_size, layer_changes  # noqa: E402
from aufs.archive.export import export_changes, export_dir, export_layer  # noqa: E402
from aufs.archive.treediff import changes_dirs, changes_size  # noqa: E402
