"""``.aufs/store.json``: which whiteout format a store keeps, and which engine used it last.

A store without the file is a Docker aufs store: AUFS whiteouts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from aufs._sys.files import write_atomic

VERSION = 1


@dataclass(frozen=True, slots=True)
class StoreMeta:
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
    if not isinstance(raw, dict) or raw.get("whiteouts") not in ("aufs", "overlay"):
        raise ValueError(f"{path}: store metadata names no known whiteout format")
    return StoreMeta(
        whiteouts=str(raw["whiteouts"]),
        engine=str(raw.get("engine", "")),
        version=int(raw.get("version", VERSION)),
    )


def write(path: str, meta: StoreMeta) -> None:
    write_atomic(path, (json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n").encode())
