"""The long runs' short report: written to ``stress/results/`` (git-ignored) and printed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, data: dict[str, Any], lines: list[str] | None = None) -> Path:
    """Write ``lines`` (a human summary) and ``data`` (as JSON) to one file; print both."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = RESULTS / f"{name}-{stamp}.txt"
    text = "\n".join([*(lines or []), json.dumps(data, indent=2, sort_keys=True), ""])
    path.write_text(text)
    print(f"--- report {path} ---\n{text}", end="", flush=True)
    return path
