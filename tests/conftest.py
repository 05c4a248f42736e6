"""Shared fixtures: store roots in tmp_path, a driver per runnable engine, mount-leak checks.

Capabilities are probed once, by trying them, and become skip reasons.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs._sys import mountinfo
from aufs.graphdriver import NotSupportedError

ENGINES = ("aufs", "overlay", "fuse-overlayfs")  # aufs runs where the kernel has it
UNION_TYPES = ("overlay", "aufs", "fuse.fuse-overlayfs", "fuse-overlayfs")


def mounts_below(path: Path | str) -> list[str]:
    """Mount points at or below ``path`` (its realpath)."""
    real = os.path.realpath(os.fspath(path))
    return [e.mountpoint for e in mountinfo.mounts_under(real)]


@functools.cache
def engine_skip_reason(engine: str) -> str | None:
    """None if ``engine`` works here, else why not (probed once per session)."""
    import tempfile

    if os.geteuid() != 0:
        return "needs root"
    root = tempfile.mkdtemp(prefix=f"aufs-probe-{engine}-")
    try:
        d = aufs.init(root, [f"aufs.engine={engine}"])
        d.cleanup()
    except NotSupportedError as exc:
        return f"{engine} not usable here: {exc}"
    finally:
        for mp in reversed(mounts_below(root)):
            os.system(f"umount -l {mp!r}")
        shutil.rmtree(root, ignore_errors=True)
    return None


def require_engine(engine: str) -> None:
    reason = engine_skip_reason(engine)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_leaked_mounts(tmp_path: Path) -> Iterator[None]:
    """Fail any test that leaves a mount under its own tmp_path (and clean it up)."""
    yield
    leaked = mounts_below(tmp_path)
    if leaked:
        for mp in reversed(leaked):
            os.system(f"umount -l {mp!r} 2>/dev/null")
        pytest.fail(f"test leaked mounts: {leaked}")


@pytest.fixture(scope="session", autouse=True)
def _no_union_left_after_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp()
    yield
    leaked = mounts_below(base)
    assert not leaked, f"mounts left after the test session: {leaked}"


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture
def driver(store_root: Path, engine: str) -> Iterator[aufs.Driver]:
    """A driver on a fresh store, for each runnable engine; cleaned up afterwards."""
    d = aufs.init(store_root, [f"aufs.engine={engine}"])
    try:
        yield d
    finally:
        d.cleanup()
