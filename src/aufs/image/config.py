"""The image config an export (or push) writes: the one that came in, or one made from it.

:func:`image_config` is pure: given the config kept for a layer of the chain (the nearest
one, at ``base_depth`` layers from the bottom), the chain's diff ids and the layers made
here above it, it returns the config bytes:

- the kept config itself, byte for byte, when the chain is that image, unchanged (same
  diff ids): the image keeps its id (the config's digest);
- else that config with ``rootfs.diff_ids`` set to the chain's and one ``history`` entry
  per layer made here (``created_by: aufs layer <id>``), ``created`` the newest of those
  — what ``docker commit`` does to its base image's config;
- a minimal config (os, architecture, no command) when no layer of the chain came with
  one.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from aufs.errors import ImageError

__all__ = ["Added", "image_config", "minimal_config"]


class Added(NamedTuple):  # not a dataclass: export would import dataclasses for it
    """A layer made here, above the image that came in."""

    layer_id: str
    created: str | None = None  # RFC 3339, UTC


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def minimal_config(diff_ids: list[str], layer_ids: list[str], arch: str) -> bytes:
    return _dumps({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"aufs layer {lid}"} for lid in layer_ids],
    })


def _parse(config: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(config)
    except ValueError as exc:
        raise ImageError(f"the kept image config is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ImageError("the kept image config is not a JSON object")
    return doc


def image_config(base: bytes, base_depth: int, diff_ids: list[str],
                 added: list[Added]) -> bytes:
    """The config of a chain whose lowest ``base_depth`` layers are the image ``base``
    came with, and whose layers above are ``added`` (``diff_ids``: all of them,
    bottom first)."""
    if base_depth + len(added) != len(diff_ids):
        raise ValueError("diff_ids must cover the base image and the added layers")
    doc = _parse(base)
    rootfs = doc.get("rootfs")
    if not added and isinstance(rootfs, dict) and rootfs.get("diff_ids") == diff_ids:
        return base
    doc["rootfs"] = {**(rootfs if isinstance(rootfs, dict) else {}), "type": "layers",
                     "diff_ids": diff_ids}
    if added:
        history = doc.get("history")
        history = list(history) if isinstance(history, list) else []
        for layer in added:
            entry: dict[str, Any] = {"created_by": f"aufs layer {layer.layer_id}"}
            if layer.created is not None:
                entry = {"created": layer.created, **entry}
            history.append(entry)
        doc["history"] = history
        newest = [layer.created for layer in added if layer.created is not None]
        if newest:
            doc["created"] = max(newest)
    return _dumps(doc)
