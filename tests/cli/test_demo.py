"""The README's main job: examples/demo.sh runs on the shipped sample and leaves no mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.kit import REPO


def test_demo_runs_and_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    p = subprocess.run(["bash", str(REPO / "examples" / "demo.sh")], capture_output=True,
                       text=True, timeout=300, check=False,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    out = p.stdout
    assert "C /etc/hostname" in out and "A /app/new.txt" in out and "D /etc/passwd" in out
    assert "mounted (1 holder)" in out
    assert "etc/.wh.passwd" in out  # the diff written to a file, in Docker's format
    assert "demo: done, no mount left" in out
    assert list(tmp_path.iterdir()) == []  # its temporary root is gone
