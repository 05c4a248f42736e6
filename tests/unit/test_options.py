"""``init`` options: ``"key=value"`` strings, unknown or malformed ones refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

import aufs
from aufs.options import ENGINES, DriverOptions, parse


@pytest.mark.parametrize(
    ("opts", "engine"),
    [
        ((), "auto"),
        (None, "auto"),
        ([], "auto"),
        (["aufs.engine=auto"], "auto"),
        (["aufs.engine=aufs"], "aufs"),
        (["aufs.engine=overlay"], "overlay"),
        (("aufs.engine=fuse-overlayfs",), "fuse-overlayfs"),
        (["aufs.engine = fuse-overlayfs"], "fuse-overlayfs"),
        (["AUFS.ENGINE=overlay"], "overlay"),  # keys are case-insensitive, as Docker's
        (["aufs.engine=overlay", "aufs.engine=aufs"], "aufs"),  # the last one wins
    ],
)
def test_options(opts: Sequence[str] | None, engine: str) -> None:
    assert parse(opts) == DriverOptions(engine=engine)


def test_engines() -> None:
    assert ENGINES == ("auto", "aufs", "overlay", "fuse-overlayfs")
    assert DriverOptions().engine == "auto"


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["bogus=1"], "unknown option 'bogus'"),
        (["dm.basesize=10G"], "unknown option"),
        (["aufs.engine"], "malformed option"),
        ([""], "malformed option"),
        (["aufs.engine=zfs"], "aufs.engine must be one of auto, aufs, overlay, fuse-overlayfs"),
        (["aufs.engine="], "aufs.engine must be one of"),
        (["aufs.engine=Overlay"], "aufs.engine must be one of"),
        ("aufs.engine=overlay", "not one string"),
        ([1], "malformed option"),
    ],
)
def test_bad_options(opts: Sequence[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(opts)


def test_init_refuses_a_bad_option_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        aufs.init(tmp_path / "store", ["nope=1"])
    assert not (tmp_path / "store").exists()
