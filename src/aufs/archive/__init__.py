"""Layer tarballs with whiteouts, and change detection (Docker's ``pkg/archive``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ArchiveError", "BreakoutError", "Change", "ChangeKind"]


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
