"""Fixtures of the reliability tests: the run's seed, trial counts, engines."""

from __future__ import annotations

import os

import pytest

from tests.reliability import crashlib

# CI trial counts (the long runs in stress/ take --trials).
CRASH_TRIALS = int(os.environ.get("AUFS_CRASH_TRIALS", "25"))


@pytest.fixture(scope="session")
def seed() -> int:
    value = crashlib.base_seed()
    print(f"\nreliability seed: {value} (AUFS_RELIABILITY_SEED={value} repeats it)")
    return value
