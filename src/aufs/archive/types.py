"""The archive floor's value types: what a layer changed (``Change``, ``ChangeKind``).

Kept apart from :mod:`aufs.archive`'s ``__init__`` so that its submodules (and the
graph-driver protocol) import them without going through the package's re-exports.
The archive errors live in :mod:`aufs.errors` and are re-exported here too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aufs.errors import ArchiveError, BreakoutError

__all__ = ["ArchiveError", "BreakoutError", "Change", "ChangeKind"]


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
