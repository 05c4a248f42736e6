"""A store's own metadata files: ``.aufs/store.json`` (which whiteout format a store keeps,
and which engine used it last) and ``.aufs/convert.json`` (the journal of an unfinished
``aufs convert``, :mod:`aufs.convert`; while it exists the store is refused).

The journal is a JSON line (target and source format) and then a line per layer done,
each appended as the layer is done: a conversion writes O(layers) bytes, not the whole
list again per layer (10,000 layers: 0.65 MB instead of 3.3 GB). A last line without its
newline (a crash in the append) is left out; version 1 (one JSON object with ``done``)
is still read.

A store without ``store.json`` is a Docker aufs store: AUFS whiteouts.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, NamedTuple

from aufs._sys.files import write_atomic
from aufs.errors import ConversionPendingError, DriverError, StoreCorruptError
from aufs.store.chain import read_store_file
from aufs.store.layout import is_valid_id

if TYPE_CHECKING:
    from aufs.store.layout import Layout

VERSION = 1
JOURNAL_VERSION = 2
_META_MAX = 64 << 10  # store.json is a line of ~60 bytes
_JOURNAL_MAX = 64 << 20  # a journal of ~1,000,000 layers; a larger one is not ours
WHITEOUT_FORMATS = ("aufs", "overlay")


class StoreMeta(NamedTuple):
    whiteouts: str = "aufs"
    engine: str = ""
    version: int = VERSION


def read(path: str) -> StoreMeta | None:
    """``store.json`` at ``path``, None if there is none; ValueError if unreadable. Read
    as the journal is: the store's own file, never followed, waited on (a FIFO) or read
    without end (a device)."""
    try:
        raw = json.loads(read_store_file(path, _META_MAX, "store metadata file"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, StoreCorruptError) as exc:
        raise ValueError(f"{path}: unreadable store metadata: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("whiteouts") not in WHITEOUT_FORMATS:
        raise ValueError(f"{path}: store metadata names no known whiteout format")
    version = raw.get("version", VERSION)
    if type(version) is not int:  # int() of a list or of 1e400 raised past every caller
        raise ValueError(f"{path}: store metadata of version {version!r}")
    return StoreMeta(
        whiteouts=str(raw["whiteouts"]),
        engine=str(raw.get("engine", "")),
        version=version,
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
        raw = read_store_file(path, _JOURNAL_MAX, "conversion journal")
        head, _, rest = raw.partition(b"\n")
        top = json.loads(head)
        if not isinstance(top, dict):
            raise ValueError("no JSON object on its first line")
        version = top.get("version", 1)
        if version == 1 and type(version) is int:  # everything on that line
            listed = top["done"]
            if not isinstance(listed, list):  # a string's letters are no layers done
                raise ValueError("done is no list")
            done = tuple(str(i) for i in listed)
        elif version == JOURNAL_VERSION and type(version) is int:
            lines = rest.split(b"\n")[:-1]  # the last one, newline-less, is torn: left out
            done = tuple(line.decode("ascii") for line in lines)
        else:
            raise ValueError(f"version {version!r} (this aufs writes {JOURNAL_VERSION})")
        if not all(is_valid_id(i) for i in done):
            raise ValueError("a line that is no layer id")
        journal = Journal(target=str(top["to"]), source=str(top["from"]), done=done)
        if journal.target not in WHITEOUT_FORMATS:
            raise ValueError(f"unknown whiteout format {journal.target!r} "
                             f"(known: aufs, overlay)")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, StoreCorruptError) as exc:
        why = str(exc).removeprefix(f"{path}: ")  # named once
        raise DriverError(f"{path}: unreadable conversion journal: {why}; "
                          f"run aufs convert --to overlay or --to aufs to redo the "
                          f"conversion") from exc
    return journal


def write_journal(path: str, journal: Journal) -> None:
    """Write the journal anew (atomically, synced)."""
    head = json.dumps({"version": JOURNAL_VERSION, "to": journal.target,
                       "from": journal.source})
    write_atomic(path, "".join((head, "\n", *(i + "\n" for i in journal.done))).encode())


def journal_done(path: str, layer_id: str) -> None:
    """Append ``layer_id`` to the journal's layers done, synced before this returns."""
    line = (layer_id + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.write(fd, line) != len(line):
            raise OSError(f"{path}: short write")
        os.fsync(fd)
    finally:
        os.close(fd)


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
