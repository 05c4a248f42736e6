"""AUFS housekeeping in a layer's directory: made by hand, and left out of listings.

Kernel AUFS makes ``.wh..wh.aufs``, ``.wh..wh.orph/`` and ``.wh..wh.plnk/`` in every rw
branch it mounts: a test that lists a layer's diff directory after a mount allows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from aufs.whiteout import Kind, classify_name

HOUSEKEEPING = (".wh..wh.aufs", ".wh..wh.orph", ".wh..wh.plnk")


def is_housekeeping(path: str) -> bool:
    """True if any component of ``path`` (relative) is AUFS housekeeping."""
    return any(classify_name(part).kind is Kind.HOUSEKEEPING for part in path.split("/"))


def content_names(names: Iterable[str]) -> list[str]:
    """``names`` (paths relative to a layer) without AUFS housekeeping, sorted."""
    return sorted(n for n in names if not is_housekeeping(n))


def listdir(path: str | os.PathLike[str]) -> list[str]:
    """A layer directory's entries, sorted, without AUFS housekeeping."""
    return content_names(os.listdir(path))


def make_housekeeping(layer: Path, linked: str = "") -> None:
    """What AUFS leaves in a rw branch: ``.wh..wh.aufs``, an orphan in ``.wh..wh.orph/``
    and, if ``linked`` names a file of the layer, its pseudo-link in ``.wh..wh.plnk/``
    (a hard link named ``<union ino>.<branch ino>``)."""
    (layer / ".wh..wh.aufs").write_bytes(b"")
    (layer / ".wh..wh.orph").mkdir()
    (layer / ".wh..wh.orph" / ".wh.0000000000000123").write_bytes(b"orphan data")
    (layer / ".wh..wh.plnk").mkdir()
    if linked:
        ino = (layer / linked).stat().st_ino
        os.link(layer / linked, layer / ".wh..wh.plnk" / f"{ino + 1000}.{ino}")
