"""What a store keeps of an image besides its layers: ``.aufs/images/<top layer>.json``.

An image that came in (``aufs import``, ``aufs pull``) leaves, for its top layer, the
config JSON and the manifest exactly as they came (the config's digest is the image id:
kept byte for byte, an unchanged image goes out with the same id). ``export`` and ``push``
read it back; a layer made locally on top of an imported one finds its base image's
config through its parent chain (:func:`nearest`).

The file is one JSON object, replaced atomically::

    {"version": 1, "config": "<the config, as text>", "manifest": "<…>" | null,
     "manifest_media_type": "<…>" | null}

Both documents are JSON, so text; bytes that are not UTF-8 survive as surrogate escapes.
A missing or damaged file is "no image here". Writers hold the store lock; readers need
none. :func:`forget` runs when the layer goes (``Driver.remove``), also for its tar-split.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import NamedTuple

from aufs._sys.files import write_atomic
from aufs.errors import DriverError
from aufs.store.chain import read_store_file
from aufs.store.layout import Layout

__all__ = ["ImageMeta", "forget", "nearest", "read", "write"]

VERSION = 1


class ImageMeta(NamedTuple):
    """An image's own documents, as they came (``bytes``: their digests matter)."""

    config: bytes
    manifest: bytes | None = None
    manifest_media_type: str | None = None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: object) -> bytes | None:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else None


def write(layout: Layout, layer_id: str, meta: ImageMeta) -> None:
    """Keep ``meta`` as the image whose top layer is ``layer_id`` (replacing any)."""
    os.makedirs(layout.images_dir, exist_ok=True)
    doc = {
        "version": VERSION,
        "config": _text(meta.config),
        "manifest": None if meta.manifest is None else _text(meta.manifest),
        "manifest_media_type": meta.manifest_media_type,
    }
    write_atomic(layout.image(layer_id), json.dumps(doc).encode() + b"\n")


RECORD_LIMIT = 64 << 20  # an image's config and manifest: JSON, far below this


def read(layout: Layout, layer_id: str) -> ImageMeta | None:
    """The image kept for ``layer_id``, or None."""
    try:
        doc = json.loads(read_store_file(layout.image(layer_id), RECORD_LIMIT, "image record"))
    except (OSError, ValueError, DriverError):
        return None
    if not isinstance(doc, dict):
        return None
    config = _bytes(doc.get("config"))
    if config is None:
        return None
    media_type = doc.get("manifest_media_type")
    return ImageMeta(config, _bytes(doc.get("manifest")),
                     media_type if isinstance(media_type, str) else None)


def nearest(layout: Layout, chain: list[str]) -> tuple[int, ImageMeta] | None:
    """The first layer of ``chain`` (top first) that has an image kept, as
    ``(its index in chain, its image)``; None if none has."""
    for i, layer_id in enumerate(chain):
        meta = read(layout, layer_id)
        if meta is not None:
            return i, meta
    return None


def forget(layout: Layout, layer_id: str) -> None:
    """Drop what is kept for a layer that goes: its image and its tar-split."""
    for path in (layout.image(layer_id), layout.tar_split(layer_id)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def keep_tar_split(layout: Layout, layer_id: str, recorded: str | None) -> None:
    """The layer's tar-split (``aufs.archive.tarsplit``) becomes the one just
    ``recorded`` (a file in staging), or none."""
    path = layout.tar_split(layer_id)
    if recorded is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(layout.tar_split_dir, exist_ok=True)
    os.replace(recorded, path)
