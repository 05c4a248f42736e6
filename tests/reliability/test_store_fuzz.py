"""The store fuzz target, bounded: random store contents, every command, 0 escapes and 0
raw exceptions (issue 13, section 2). ``fuzz/store_fuzz.py`` runs it without bound."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.conftest import require_engine
from tests.reliability.storefuzz import StoreHarness

ITERATIONS = int(os.environ.get("AUFS_STORE_FUZZ_ITERATIONS", "60"))


def test_random_store_contents(tmp_path: Path) -> None:
    require_engine("overlay")
    harness = StoreHarness(tmp_path)
    rng = random.Random(int(os.environ.get("AUFS_STORE_FUZZ_SEED", "13")))
    for i in range(ITERATIONS):
        data = rng.randbytes(64)
        try:
            harness.run(data)
        except AssertionError as exc:
            pytest.fail(f"input {i} ({data.hex()}): {exc}")
