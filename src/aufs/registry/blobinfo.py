"""Which blob holds a layer on which registry repository: learnt on pull and push, used by
push to skip (``HEAD``) or mount a blob from another repository instead of uploading it.

Kept in ``.aufs/blobs.json``: ``{diff id: [{digest, size, mediaType, host, repo}, …]}``,
newest first, a few entries per layer. It is a hint: push checks every entry with the
registry, and a layer's diff id is computed from its content before an entry is used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from aufs._sys.files import write_atomic
from aufs.errors import DriverError
from aufs.registry.manifest import Descriptor
from aufs.store.chain import read_store_file
from aufs.store.layout import Layout

_LIMIT = 64 << 20

_KEEP = 8


@dataclass(frozen=True, slots=True)
class Seen:
    digest: str
    size: int
    media_type: str
    host: str
    repo: str


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _read(layout: Layout) -> dict[str, list[dict[str, object]]]:
    try:
        raw = json.loads(read_store_file(layout.blob_sources_file, _LIMIT, "blob record"))
    except (OSError, ValueError, DriverError):
        return {}  # a hint only: damaged, it is dropped (the next write starts it anew)
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, list)}


def seen(layout: Layout, diff_id: str, host: str) -> list[Seen]:
    """Where a layer with this diff id was seen on ``host``, newest first."""
    out = []
    for e in _read(layout).get(diff_id, []):
        if not isinstance(e, dict) or e.get("host") != host:
            continue
        digest, size, kind, repo = e.get("digest"), e.get("size"), e.get("mediaType"), \
            e.get("repo")
        if isinstance(digest, str) and isinstance(size, int) and isinstance(kind, str) and \
                isinstance(repo, str):
            out.append(Seen(digest, size, kind, host, repo))
    return out


def remember(layout: Layout, host: str, repo: str, layers: Sequence[Descriptor],
             diff_ids: Sequence[str]) -> None:
    """Record that ``host/repo`` has these layer blobs (callers hold the store lock)."""
    data = _read(layout)
    for desc, diff_id in zip(layers, diff_ids, strict=True):
        entry: dict[str, object] = {"digest": desc.digest, "size": desc.size,
                                    "mediaType": desc.media_type, "host": host, "repo": repo}
        old = [e for e in data.get(diff_id, []) if e != entry]
        data[diff_id] = [entry, *old][:_KEEP]
    write_atomic(layout.blob_sources_file,
                 json.dumps(data, indent=1, sort_keys=True).encode() + b"\n", fsync=False)
