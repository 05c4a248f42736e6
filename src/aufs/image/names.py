"""Names given to layers, kept in ``.aufs/names.json``: ``aufs import --name``, and the
references an image came with (``RepoTags``, OCI ref names, the ``pull`` reference).

The file maps a name to a layer id. Callers hold the store lock while they change it;
readers need no lock (the file is replaced atomically).
"""

from __future__ import annotations

import json
import re

from aufs._sys.files import write_atomic
from aufs.errors import InvalidNameError as InvalidNameError  # re-export
from aufs.errors import StoreCorruptError
from aufs.store.chain import read_store_file
from aufs.store.layout import Layout, is_valid_id

#: names.json of 100,000 names is ~10 MB: a larger one is not ours
NAMES_LIMIT = 64 << 20

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,254}")


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid name {name!r}: use letters, digits and _.:/@+- (at most 255)")
    return name


def read(layout: Layout) -> dict[str, str]:
    """Every name and the layer it names; a missing or damaged file is no names."""
    try:  # the store's own file: no symlink followed, no FIFO waited on, bounded
        raw = json.loads(read_store_file(layout.names_file, NAMES_LIMIT, "names file"))
    except (FileNotFoundError, ValueError, StoreCorruptError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str) and is_valid_id(v)}


def _write(layout: Layout, names: dict[str, str]) -> None:
    data = json.dumps(dict(sorted(names.items())), indent=1).encode() + b"\n"
    write_atomic(layout.names_file, data)


def set_name(layout: Layout, name: str, layer_id: str) -> None:
    """Record ``name`` for ``layer_id`` (a name names one layer; it moves if reused)."""
    names = read(layout)
    names[validate_name(name)] = layer_id
    _write(layout, names)


def drop_layer(layout: Layout, layer_id: str) -> None:
    """Forget every name of a removed layer."""
    names = read(layout)
    kept = {k: v for k, v in names.items() if v != layer_id}
    if kept != names:
        _write(layout, kept)


def by_layer(names: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, layer_id in sorted(names.items()):
        out.setdefault(layer_id, []).append(name)
    return out


def reference(names: list[str]) -> str | None:
    """The name to export a layer under: the first that is an image reference
    (``repo:tag``, ``host/repo@sha256:…``), else the first name, else None."""
    for name in names:
        if "/" in name or ":" in name:
            return name
    return names[0] if names else None
