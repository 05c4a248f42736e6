"""Fixtures for CLI tests: a store root in tmp_path, cleaned up with ``aufs cleanup``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.kit import Aufs


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Aufs]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    a = Aufs(tmp_path / "store")
    try:
        yield a
    finally:
        if a.root.exists():
            r = a.run("cleanup")
            assert r.code == 0, r.err
