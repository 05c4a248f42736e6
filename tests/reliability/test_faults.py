"""Faults of the other process: the fuse-overlayfs daemon behind a union is SIGKILLed.

Its mount stays in the table but every access fails (ENOTCONN). The store must notice:
a later ``get`` mounts the layer anew, ``put``, ``remove`` and ``cleanup()`` get rid of
the dead mount, and no mount and no daemon is left.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from tests.conftest import require_engine
from tests.reliability import invariants

pytestmark = pytest.mark.root


@pytest.fixture
def fuse_driver(tmp_path: Path) -> Iterator[aufs.Driver]:
    require_engine("fuse-overlayfs")
    d = aufs.init(tmp_path / "store", ["aufs.engine=fuse-overlayfs"])
    try:
        d.create("base")
        (Path(d.layout.diff("base")) / "file").write_text("base\n")
        d.create("top", "base")
        yield d
    finally:
        d.cleanup()
    assert invariants.leak_problems(str(tmp_path / "store")) == []


def kill_daemon(d: aufs.Driver, layer: str) -> None:
    daemons = invariants.fuse_daemons_for(d.layout.mnt(layer))
    assert len(daemons) == 1, daemons
    os.kill(daemons[0], signal.SIGKILL)
    with pytest.raises(OSError):  # the mount is dead now (ENOTCONN)
        os.listdir(d.layout.mnt(layer))


def test_get_after_the_daemon_died_mounts_anew(fuse_driver: aufs.Driver) -> None:
    d = fuse_driver
    d.get("top")
    d.get("top")
    kill_daemon(d, "top")
    path = d.get("top")
    assert os.listdir(path) == ["file"]
    assert d.refcount("top") == 1  # the dead union's holders are void
    d.put("top")
    assert not d.mounted("top")
    assert invariants.fuse_daemons_for(d.root) == []


def test_put_after_the_daemon_died_unmounts(fuse_driver: aufs.Driver) -> None:
    d = fuse_driver
    d.get("top")
    kill_daemon(d, "top")
    d.put("top")
    assert invariants.mounts_under(d.layout.mnt_dir) == []


def test_remove_after_the_daemon_died(fuse_driver: aufs.Driver) -> None:
    d = fuse_driver
    d.get("top")
    kill_daemon(d, "top")
    d.remove("top")
    assert not d.exists("top")
    assert invariants.mounts_under(d.layout.mnt_dir) == []
    assert invariants.store_problems(d.root) == []


def test_cleanup_after_the_daemon_died(fuse_driver: aufs.Driver) -> None:
    d = fuse_driver
    d.get("top")
    kill_daemon(d, "top")
    d.cleanup()
    assert invariants.leak_problems(d.root) == []
    again = aufs.init(d.root, ["aufs.engine=fuse-overlayfs"])
    try:
        assert os.listdir(again.get("top")) == ["file"]
        again.put("top")
    finally:
        again.cleanup()
