"""The store's own directories (``mnt/``, ``diff/``, ``layers/``, ``.aufs/`` and those
under it) are directories, never symlinks: every path the store joins runs through them,
so ``mnt -> /somewhere`` would put mount points, unions and removals there, outside the
store. A store where one is not a directory is refused, with one line naming it: a top
one (:meth:`Layout.store_dirs`) until it is one again, one inside ``.aufs/``
(:meth:`Layout.own_dirs`, aufs's own state) until ``aufs check --repair`` removes it."""

from __future__ import annotations

from aufs.errors import StoreCorruptError
from aufs.store.chain import not_a_dir
from aufs.store.layout import Layout

__all__ = ["damaged", "damaged_own", "require_sound"]


def damaged(layout: Layout) -> list[tuple[str, str]]:
    """``(path, what it is)`` for each of the store's directories that exists and is no
    directory (a symlink is none)."""
    return [(d, what) for d in layout.store_dirs() if (what := not_a_dir(d))]


def damaged_own(layout: Layout) -> list[tuple[str, str]]:
    """The same for the directories inside ``.aufs/``."""
    return [(d, what) for d in layout.own_dirs() if (what := not_a_dir(d))]


def require_sound(layout: Layout) -> None:
    """Raise :class:`StoreCorruptError` naming the first of the store's directories that
    is no directory."""
    for path, what in damaged(layout):
        raise StoreCorruptError(f"{path}: is {what}, not a directory of the store "
                                f"(nothing is read or written through it)")
    for path, what in damaged_own(layout):
        raise StoreCorruptError(f"{path}: is {what}, not a directory of the store's own "
                                f"(aufs check --repair removes it)")
