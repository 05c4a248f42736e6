"""A union found mounted is reused only if the engine says its branches are the chain.

Kernel AUFS builds a long chain in several mount calls, and a process killed between them
leaves a union with only some branches (``AufsEngine.matches`` reads them from sysfs:
table-tested in tests/unit/test_aufs_kernel.py). Here the driver's side, on a real
overlay mount whose engine is told that the mounted union is not whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import aufs
from aufs._sys import mountinfo
from aufs.union.base import Branches
from tests.conftest import require_engine


def _mount_id(path: str) -> int | None:
    return next((e.mount_id for e in reversed(mountinfo.read()) if e.mountpoint == path), None)


def test_a_union_not_whole_is_unmounted_and_built_again(
        store_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_engine("overlay")
    d = aufs.init(store_root, ["aufs.engine=overlay"])
    try:
        d.create("base")
        Path(d.layout.diff("base"), "from-base").write_text("x")
        d.create("top", "base")
        path = d.get("top")
        calls: list[str] = []
        real_mount, real_unmount = d.engine.mount, d.engine.unmount

        def mount(b: Branches) -> None:
            calls.append("mount")
            real_mount(b)

        def unmount(*args: Any) -> None:
            calls.append("unmount")
            real_unmount(*args)

        monkeypatch.setattr(d.engine, "mount", mount)
        monkeypatch.setattr(d.engine, "unmount", unmount)
        asked: list[Branches] = []

        def half(branches: Branches) -> bool:
            asked.append(branches)
            return False

        monkeypatch.setattr(d.engine, "matches", half)
        assert d.get("top") == path
        assert asked == [Branches(target=path, rw=d.layout.diff("top"),
                                  lowers=(d.layout.diff("base"),), work=d.layout.work("top"))]
        assert calls == ["unmount", "mount"]
        assert [e.mountpoint for e in mountinfo.read()].count(path) == 1  # not stacked
        assert d.refcount("top") == 1  # the holders of the broken union are void
        assert os.listdir(path) == ["from-base"]
        monkeypatch.setattr(d.engine, "matches", lambda branches: True)
        assert d.get("top") == path and calls == ["unmount", "mount"]  # reused
        assert d.refcount("top") == 2
        d.put("top")
        d.put("top")
        assert _mount_id(path) is None
    finally:
        d.cleanup()
