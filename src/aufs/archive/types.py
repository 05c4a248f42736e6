"""The archive floor's value types: what a layer changed (``Change``, ``ChangeKind``).

Kept apart from :mod:`aufs.archive`'s ``__init__`` so that its submodules (and the
graph-driver protocol) import them without going through the package's re-exports.
The archive errors live in :mod:`aufs.errors` and are re-exported here too.
"""

from __future__ import annotations

import enum

from aufs.errors import ArchiveError, BreakoutError

__all__ = ["ArchiveError", "BreakoutError", "Change", "ChangeKind"]


class ChangeKind(enum.IntEnum):
    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def letter(self) -> str:
        return "CAD"[self.value]


class Change:
    """One changed path of a layer. Immutable; compared, ordered and hashed as the tuple
    ``(path, kind)``. (Written out, not a dataclass: importing dataclasses costs every
    command 5 ms.) The slots' own descriptors set a new one fast (archive.changes)."""

    __slots__ = ("kind", "path")
    path: str
    kind: ChangeKind

    def __init__(self, path: str, kind: ChangeKind) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "kind", kind)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __repr__(self) -> str:
        return f"Change(path={self.path!r}, kind={self.kind!r})"

    def _key(self) -> tuple[str, ChangeKind]:
        return (self.path, self.kind)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Change)
        return self._key() == other._key()

    def __lt__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() <= other._key()

    def __gt__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() > other._key()

    def __ge__(self, other: Change) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() >= other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return f"{self.kind.letter} {self.path}"
