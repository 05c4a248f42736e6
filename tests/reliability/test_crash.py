"""Crash consistency: SIGKILL a real process at a random moment of each store operation
(init, create, remove, get/put, apply_diff, convert).

After every kill a fresh ``aufs.init`` must open the store, every layer must be whole or
gone, reference counts must match what the dead process did (its counts void once its
mounts are gone), the store must still work, and ``cleanup()`` must leave no mount.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_engine
from tests.reliability import scenarios
from tests.reliability.conftest import CRASH_TRIALS
from tests.reliability.crashlib import Report, Scenario, run_trials

pytestmark = pytest.mark.root


def _check(report: Report, trials: int) -> None:
    print(report.summary())
    assert not report.failures, report.failure_text()
    assert report.trials == trials
    # The kills must mostly land inside an operation, or the test proves little.
    inside = sum(n for phase, n in report.phases.items() if phase.startswith("during"))
    assert inside >= trials // 2, report.summary()


def _run(scenario: Scenario, tmp_path: Path, engine: str, seed: int) -> None:
    require_engine(engine)
    report = run_trials(scenario, str(tmp_path / "store"), engine, CRASH_TRIALS, seed)
    _check(report, CRASH_TRIALS)


@pytest.mark.parametrize("engine", ["overlay"])
def test_kill_during_init(tmp_path: Path, engine: str, seed: int) -> None:
    _run(scenarios.INIT, tmp_path, engine, seed)


@pytest.mark.parametrize("engine", ["overlay", "aufs"])
def test_kill_during_create(tmp_path: Path, engine: str, seed: int) -> None:
    _run(scenarios.CREATE, tmp_path, engine, seed)


@pytest.mark.parametrize("engine", ["overlay", "fuse-overlayfs", "aufs"])
def test_kill_during_remove(tmp_path: Path, engine: str, seed: int) -> None:
    _run(scenarios.REMOVE, tmp_path, engine, seed)


@pytest.mark.parametrize("engine", ["overlay", "fuse-overlayfs", "aufs"])
def test_kill_during_get_put(tmp_path: Path, engine: str, seed: int) -> None:
    _run(scenarios.GETPUT, tmp_path, engine, seed)


@pytest.mark.parametrize("engine", ["aufs", "overlay"])
def test_kill_during_get_put_of_a_deep_chain(tmp_path: Path, engine: str, seed: int) -> None:
    """AUFS stacks a chain this long in several mount calls (overlay, in one, is the
    control that the check itself holds)."""
    _run(scenarios.GETPUT_DEEP, tmp_path, engine, seed)


@pytest.mark.parametrize("engine", ["overlay"])
def test_kill_during_apply_diff(tmp_path: Path, engine: str, seed: int) -> None:
    apply = scenarios.ApplyScenario(str(tmp_path), seed)
    _run(apply.scenario, tmp_path, engine, seed)


def test_kill_during_convert(tmp_path: Path, seed: int) -> None:
    require_engine("overlay")
    require_engine("fuse-overlayfs")
    from tests.reliability.convertcrash import ConvertCrash

    report = ConvertCrash(tmp_path, seed).run(CRASH_TRIALS)
    _check(report, CRASH_TRIALS)
