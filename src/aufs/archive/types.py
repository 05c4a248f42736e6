"""The archive floor's value types: the kinds of change (``ChangeKind``); the change
itself, ``Change``, is in :mod:`aufs.archive.change` (it is a dataclass: its import
costs what a command that makes none should not pay).

Kept apart from :mod:`aufs.archive`'s ``__init__`` so that its submodules (and the
graph-driver protocol) import them without going through the package's re-exports.
The archive errors live in :mod:`aufs.errors` and are re-exported here too.
"""

from __future__ import annotations

import enum

from aufs.errors import ArchiveError, BreakoutError

__all__ = ["LETTERS", "ArchiveError", "BreakoutError", "ChangeKind"]


class ChangeKind(enum.IntEnum):
    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def letter(self) -> str:
        return LETTERS[self]


LETTERS = "CAD"  # Docker's letter of each kind, indexed by its int
