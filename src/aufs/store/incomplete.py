"""Markers of layers being imported: ``.aufs/incomplete/<id>`` holds the importer's pid.

``aufs import`` and ``aufs pull`` write the marker (under the store lock) before they
create the layer and remove it once the layer's tar is applied. A layer that exists with
a marker whose process is gone was left half-applied by a crash: it is not the layer its
content-addressed id promises, so an import takes it away and applies it anew, and
``aufs check`` reports it. Marker names come from the store and are validated as ids.
"""

from __future__ import annotations

import contextlib
import os

from aufs._sys import safefs
from aufs._sys.files import write_atomic
from aufs.store.layout import Layout
from aufs.store.recover import pid_alive


def mark(layout: Layout, layer_id: str) -> None:
    os.makedirs(layout.incomplete_dir, exist_ok=True)
    write_atomic(layout.incomplete(layer_id), f"{os.getpid()}\n".encode())


def clear(layout: Layout, layer_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(layout.incomplete(layer_id))


def owner(layout: Layout, layer_id: str) -> int | None:
    """The pid in ``layer_id``'s marker (0 if unreadable), or None if it has none."""
    try:  # the store's own file: no symlink followed, no FIFO waited on
        fd, _ = safefs.open_regular(layout.incomplete(layer_id))
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    if fd < 0:
        return 0
    try:
        text = os.read(fd, 32)
    except OSError:
        return 0
    finally:
        os.close(fd)
    try:
        pid = int(text.strip() or b"0")
    except ValueError:
        return 0
    return max(pid, 0)


def alive(pid: int) -> bool:
    """Whether the importer ``pid`` still runs (0, an unreadable marker: no)."""
    return pid > 0 and (pid == os.getpid() or pid_alive(pid))


def listed(layout: Layout) -> list[str]:
    """The names under ``.aufs/incomplete/`` (not yet validated)."""
    try:
        return sorted(os.listdir(layout.incomplete_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []

