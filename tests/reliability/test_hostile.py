"""Hostile input to apply_diff: the breakout corpus and malformed archives (the fuzzer's
seeds), each checked for every promise: only ArchiveError/BreakoutError, nothing outside
``diff/<id>`` touched or read, the layer unchanged after a failure."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_engine
from tests.reliability import hostile

pytestmark = pytest.mark.root

# Entries that replace a symlink of the layer (or of the archive) by a plain entry: the
# right outcome is to replace it, so success is fine — as long as nothing outside changed.
MAY_SUCCEED = {
    "existing-symlink-chmod-dir", "existing-file-symlink-overwrite",
    "existing-symlink-hardlink-over", "symlink-file-then-overwrite",
    "hardlink-to-symlink-then-write",
}
# Odd input that must fail, but any ArchiveError will do.
ANY_ARCHIVE_ERROR = {"whiteout-of-dot", "whiteout-of-dot-in-dir", "whiteout-of-nothing",
                     "whiteout-of-nothing-in-dir", "hardlink-dir"}

BREAKOUTS = hostile.breakouts()
MALFORMED = hostile.malformed()


@pytest.fixture(params=["overlay", "fuse-overlayfs"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture
def harness(tmp_path: Path, engine: str) -> Iterator[hostile.ApplyHarness]:
    h = hostile.ApplyHarness(tmp_path, engine)
    with h.running():
        yield h


def _case_kind(name: str) -> str:
    for prefix in ("gzip-", "bzip2-", "xz-"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _apply_all(tmp_path: Path, engine: str, cases: dict[str, bytes],
               judge: Callable[[str, hostile.Outcome], str | None], *,
               from_file: bool = False) -> list[str]:
    """Apply every case; collect broken promises and wrong outcomes (a fresh harness
    after each broken promise, since the victim or the store may be damaged)."""
    wrong: list[str] = []
    todo = list(cases.items())
    n = 0
    while todo:
        h = hostile.ApplyHarness(tmp_path / f"h{n}", engine, from_file=from_file)
        n += 1
        with h.running():
            while todo:
                name, data = todo.pop(0)
                try:
                    verdict = judge(name, h.apply(data))
                except hostile.Finding as finding:
                    wrong.append(f"{name}: {finding}")
                    break
                if verdict:
                    wrong.append(f"{name}: {verdict}")
    return wrong


def _breakout_verdict(name: str, outcome: hostile.Outcome) -> str | None:
    kind = _case_kind(name)
    if outcome.ok:
        return None if kind in MAY_SUCCEED else "applied without error"
    if kind not in ANY_ARCHIVE_ERROR and not outcome.error.startswith("BreakoutError"):
        return f"{outcome.error} (expected BreakoutError)"
    return None


def test_breakouts(tmp_path: Path, engine: str) -> None:
    wrong = _apply_all(tmp_path, engine, BREAKOUTS, _breakout_verdict)
    assert not wrong, "\n".join(wrong)


def test_malformed(tmp_path: Path, engine: str) -> None:
    wrong = _apply_all(tmp_path, engine, MALFORMED,
                       lambda name, o: "applied without error" if o.ok else None)
    assert not wrong, "\n".join(wrong)


def test_real_layers_apply(harness: hostile.ApplyHarness) -> None:
    for name, data in hostile.seeds().items():
        if name.startswith("real-layer"):
            outcome = harness.apply(data)
            assert outcome.ok, f"{name}: {outcome.error}"
            names = {c.path for c in harness.d.changes("L")}
            assert {"/usr/bin/tool", "/usr/bin/tool-alias", "/lowerfile"} <= names, names


STRUCTURED_CASES = 120


def test_structured_random_tars(tmp_path: Path, engine: str, seed: int) -> None:
    """A small seeded fuzz run in CI: tars built from tricky names, types and links
    (``fuzz/apply_fuzz.py --structured`` does the same, longer, coverage-guided)."""
    rng = random.Random(f"{seed}/structured")
    cases = {f"structured-{n}": hostile.structured_tar(rng.randbytes(rng.randrange(16, 256)))
             for n in range(STRUCTURED_CASES)}
    wrong = _apply_all(tmp_path, engine, cases, lambda name, o: None)
    assert not wrong, f"seed {seed}:\n" + "\n".join(wrong[:10])


@pytest.fixture
def writer_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plain regular file through the writer process (aufs.archive.offload)."""
    from aufs.archive import offload, unpack

    monkeypatch.setattr(unpack, "OFFLOAD_BYTES", 0)
    monkeypatch.setattr(offload, "_BEHIND", 1 << 40)


@pytest.mark.usefixtures("writer_forced")
def test_breakouts_through_the_writer(tmp_path: Path, engine: str) -> None:
    wrong = _apply_all(tmp_path, engine, BREAKOUTS, _breakout_verdict, from_file=True)
    assert not wrong, "\n".join(wrong)


@pytest.mark.usefixtures("writer_forced")
def test_structured_random_tars_through_the_writer(tmp_path: Path, engine: str,
                                                   seed: int) -> None:
    rng = random.Random(f"{seed}/structured-writer")
    cases = {f"structured-{n}": hostile.structured_tar(rng.randbytes(rng.randrange(16, 256)))
             for n in range(STRUCTURED_CASES)}
    wrong = _apply_all(tmp_path, engine, cases, lambda name, o: None, from_file=True)
    assert not wrong, f"seed {seed}:\n" + "\n".join(wrong[:10])
