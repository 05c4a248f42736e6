"""A store's own metadata files: ``.aufs/store.json`` (which whiteout format a store keeps,
and which engine used it last) and ``.aufs/convert.json`` (the journal of an unfinished
``aufs convert``, :mod:`aufs.convert`; while it exists the store is refused).

A store without ``store.json`` is a Docker aufs store: AUFS whiteouts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple

from aufs._sys.files import write_atomic
from aufs.errors import ConversionPendingError, DriverError

if TYPE_CHECKING:
    from aufs.store.layout import Layout

VERSION = 1
JOURNAL_VERSION = 1
WHITEOUT_FORMATS = ("aufs", "overlay")


class StoreMeta(NamedTuple):
    whiteouts: str = "aufs"
    engine: str = ""
    version: int = VERSION


def read(path: str) -> StoreMeta | None:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable store metadata: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("whiteouts") not in WHITEOUT_FORMATS:
        raise ValueError(f"{path}: store metadata names no known whiteout format")
    return StoreMeta(
        whiteouts=str(raw["whiteouts"]),
        engine=str(raw.get("engine", "")),
        version=int(raw.get("version", VERSION)),
    )


def write(path: str, meta: StoreMeta) -> None:
    write_atomic(path, (json.dumps(meta._asdict(), indent=2, sort_keys=True) + "\n").encode())


# -- the conversion journal ------------------------------------------------------------

class Journal(NamedTuple):
    """The journal of a conversion: to ``target`` from ``source``, layers ``done``."""

    target: str
    source: str
    done: tuple[str, ...] = ()


def read_journal(path: str) -> Journal | None:
    """The journal at ``path``, None if there is none; DriverError if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        journal = Journal(target=str(raw["to"]), source=str(raw["from"]),
                          done=tuple(str(i) for i in raw["done"]))
        if journal.target not in WHITEOUT_FORMATS:
            raise ValueError(f"unknown whiteout format {journal.target!r} "
                             f"(known: aufs, overlay)")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DriverError(f"{path}: unreadable conversion journal: {exc}; "
                          f"run aufs convert --to overlay or --to aufs to redo the "
                          f"conversion") from exc
    return journal


def write_journal(path: str, journal: Journal) -> None:
    body = {"version": JOURNAL_VERSION, "to": journal.target, "from": journal.source,
            "done": journal.done}
    write_atomic(path, (json.dumps(body) + "\n").encode())


def pending(layout: Layout) -> str | None:
    """The target format of an unfinished conversion of the store, or None."""
    try:
        journal = read_journal(layout.convert_journal)
    except DriverError:
        return "overlay or aufs"
    return None if journal is None else journal.target


def check_not_pending(layout: Layout) -> None:
    """Raise :class:`ConversionPendingError` if a conversion of the store is unfinished."""
    target = pending(layout)
    if target is not None:
        to = target if target in WHITEOUT_FORMATS else "overlay"
        raise ConversionPendingError(
            f"{layout.root}: a conversion of the store's whiteouts to {target} was "
            f"interrupted; finish it with: aufs --root {layout.root} convert --to {to}")
