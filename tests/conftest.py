"""Shared fixtures: store roots in tmp_path, a driver per runnable engine, mount-leak checks.

Capabilities are probed once, by trying them, and become skip reasons.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs._sys import libc
from aufs._sys import mount as sysmount
from aufs.graphdriver import NotSupportedError
from tests.leaks import fuse_daemons_below, mounts_below, writer_processes

__all__ = ["fuse_daemons_below", "mounts_below", "require_engine"]

ENGINES = ("aufs", "overlay", "fuse-overlayfs")  # aufs runs where the kernel has it
UNION_TYPES = ("overlay", "aufs", "fuse.fuse-overlayfs", "fuse-overlayfs")


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
        _release(mounts_below(root), fuse_daemons_below(root))
        shutil.rmtree(root, ignore_errors=True)
    return None


def require_engine(engine: str) -> None:
    reason = engine_skip_reason(engine)
    if reason is not None:
        pytest.skip(reason)


def _release(mounts: list[str], pids: list[int]) -> None:
    for mp in reversed(mounts):
        with contextlib.suppress(OSError):
            libc.umount2(mp, sysmount.MNT_DETACH)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _no_leaked_mounts(tmp_path: Path) -> Iterator[None]:
    """Fail any test that leaves a mount or a FUSE daemon under its own tmp_path (and
    clean them up)."""
    yield
    leaked = mounts_below(tmp_path)
    daemons = fuse_daemons_below(tmp_path)
    writers = writer_processes()
    if leaked or daemons or writers:
        _release(leaked, daemons + writers)
        pytest.fail(f"test leaked mounts: {leaked}, fuse-overlayfs daemons: {daemons}, "
                    f"file-writer processes: {writers}")


@pytest.fixture(scope="session", autouse=True)
def _no_union_left_after_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp()
    yield
    leaked = mounts_below(base)
    daemons = fuse_daemons_below(base)
    _release(leaked, daemons)
    assert not leaked and not daemons, (
        f"left after the test session: mounts {leaked}, fuse-overlayfs daemons {daemons}")


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


@pytest.fixture
def overlay_driver(store_root: Path) -> Iterator[aufs.Driver]:
    """A driver on a fresh store at ``store_root`` with kernel overlayfs (skips where it
    cannot run): for tests about the store itself, not about engines."""
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        yield d
    finally:
        d.cleanup()
