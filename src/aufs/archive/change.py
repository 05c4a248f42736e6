"""``Change``: one changed path of a layer, the frozen dataclass API.md names.

A module of its own because ``dataclasses`` imports ``inspect`` (about 5 ms): the
commands that make no Change (``aufs diff``, ``aufs ls``) do not import it, and
``aufs.archive.Change`` loads it on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

from aufs.archive.types import LETTERS, ChangeKind

__all__ = ["Change"]


@dataclass(frozen=True, order=True, slots=True)
class Change:
    """A path of the layer (absolute inside it, ``"/etc/passwd"``) and what happened
    to it; compared, ordered and hashed as the tuple ``(path, kind)``. ``str`` gives
    Docker's line, ``"C /etc/passwd"``. Slots: a layer of 200,000 files is as many
    Changes (:mod:`aufs.archive.changes` sets the slots directly when it makes many)."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        # indexed by the int: a Change made with a plain 0/1/2 kind prints too
        return f"{LETTERS[self.kind]} {self.path}"
