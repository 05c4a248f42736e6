"""``.aufs/`` in a store we did not create (Docker's ``/var/lib/docker/aufs``): removed
again by ``cleanup`` when all it holds is what any open makes and drops.

Opening a store makes ``.aufs/`` (the lock, ``refs/``, ``work/``, ``staging/``, ``l/``);
Docker's driver never looks at it. A store of our own keeps it (``store.json`` says the
store's format). In a Docker store nothing there outlives a cleanup — reference counts at
zero, empty work, staging and link directories — unless the user stored something of
ours there (image configs, names, a conversion journal…): then it stays.
"""

from __future__ import annotations

import contextlib
import os

from aufs._sys.files import rmtree
from aufs.store import refs
from aufs.store.layout import Layout

__all__ = ["is_transient", "remove_if_transient"]


def is_transient(names: set[str], counts: dict[str, int], busy: set[str]) -> bool:
    """Is ``.aufs/`` (entries ``names``) only what an open makes: the lock and the
    ``refs``/``work``/``staging``/``l`` directories, every count zero, and none of
    ``staging``/``l`` holding anything (``busy``)? No ``store.json``: not our store. Pure."""
    transient = {"lock", "refs", "work", "staging", "l", "children"}  # children: a cache
    return names <= transient and not any(counts.values()) and not busy & {"staging", "l"}


def remove_if_transient(layout: Layout) -> bool:
    """Remove ``.aufs/`` if :func:`is_transient`; the caller holds the store lock and
    has unmounted every union. True if it was removed."""
    private = layout.private_dir
    try:
        names = set(os.listdir(private))
    except FileNotFoundError:
        return False
    busy: set[str] = {d for d in ("staging", "l")
            if d in names and os.listdir(os.path.join(private, d))}
    if not is_transient(names, refs.all_counts(layout.refs_dir), busy):
        return False
    for d in (layout.work_dir, layout.refs_dir, layout.staging_dir, layout.links_dir,
              f"{private}/children"):
        with contextlib.suppress(FileNotFoundError):
            rmtree(d)  # work/<id> of unmounted unions; refs at zero
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.lock_file)  # waiters lock anew (aufs.store.lock)
    try:
        os.rmdir(private)
    except OSError:  # something came meanwhile: it stays
        return False
    return True
