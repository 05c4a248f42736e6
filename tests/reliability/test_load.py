"""Load: 3 processes x 8 threads on overlapping ids; only documented errors, no deadlock,
exact reference counts, nothing left mounted or running afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require_engine
from tests.reliability.loadlib import run_load

pytestmark = pytest.mark.root

SECONDS = float(os.environ.get("AUFS_LOAD_SECONDS", "10"))


@pytest.mark.parametrize("engine", ["overlay", "fuse-overlayfs"])
def test_three_processes_eight_threads(tmp_path: Path, engine: str, seed: int) -> None:
    require_engine(engine)
    report = run_load(str(tmp_path / "store"), engine, SECONDS, seed)
    print(report.summary())
    assert not report.problems, report.failure_text()
    # The run must really have raced: every operation ran, on both sides of each race.
    for op in ("create", "get", "diff", "changes", "size", "remove"):
        assert report.ops[op] > 0, report.summary()
    assert report.expected["create: LayerExistsError"] > 0, report.summary()
    assert report.expected["remove: LayerInUseError"] > 0, report.summary()
