"""``aufs convert`` killed with SIGKILL at random points, then run again: the store ends
whole, in the asked format, with every layer's ``changes``/``diff`` as before.

The conversion runs in a forked child process that counts its file-system mutations (every
mutating ``os`` call: rename, unlink, mknod, setxattr, utime, writes, fsync, ...) and
kills itself just before the N-th; N is drawn at random (seeded) over the whole run, so
kills land between any two steps: before the journal, inside a layer's rewrite, between
a marker's creation and its predecessor's removal, during the attic moves, around the
``store.json`` flip. While the journal is there, ``aufs.init`` must refuse the store.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from signal import SIGKILL

import pytest

import aufs
from aufs.convert import ConversionPendingError, convert, pending
from aufs.store import meta
from aufs.store.layout import Layout
from tests.engines.test_convert import markers
from tests.engines.test_convert_support import (
    Listing,
    add_busy_layer,
    build_docker_store,
    convert_killed,
    housekeeping_of,
    store_listing,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, xattrs)")

SEED = 20240611
TRIALS = 14  # per direction; plus the double kills and the about-turns below


@dataclass(frozen=True)
class Template:
    aufs: Path       # the store in AUFS format
    overlay: Path    # the same, converted to overlay
    listing: Listing
    housekeeping: dict[str, str]
    mutations: dict[str, int]  # mutations of a whole run, per target format


def run_child(root: Path, to: str, kill_at: int) -> int:
    """The signal that ended the converting child (0 if it finished)."""
    return convert_killed(root, to, kill_at)[0]


def copy_store(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("convert-crash")
    a = base / "aufs"
    build_docker_store(a)
    add_busy_layer(a)
    listing = store_listing(a)
    housekeeping = housekeeping_of(a / "diff")
    o = copy_store(a, base / "overlay")
    convert(o, "overlay")
    assert store_listing(o) == listing
    counts = {}
    for to, src in (("overlay", a), ("aufs", o)):
        signal, counts[to] = convert_killed(copy_store(src, base / f"count-{to}"), to, 0)
        assert signal == 0
        assert counts[to] > 100  # enough steps to land kills inside layers
    return Template(a, o, listing, housekeeping, counts)


def check_killed(root: Path, to: str, t: Template) -> None:
    """Right after a kill: a pending conversion keeps every driver out; without one the
    store is whole in the format its ``store.json`` names (killed before the journal,
    or after the end)."""
    lay = Layout.at(root)
    if pending(lay) is None:
        stored = meta.read(lay.meta_file)
        fmt = stored.whiteouts if stored is not None else "aufs"
        assert markers(root)["aufs" if fmt == "overlay" else "overlay"] == 0
        assert store_listing(root) == t.listing
        return
    assert pending(lay) == to
    with pytest.raises(ConversionPendingError, match=f"convert --to {to}"):
        aufs.init(root)


def check_finished(root: Path, to: str, t: Template) -> None:
    lay = Layout.at(root)
    assert store_listing(root) == t.listing
    stored = meta.read(lay.meta_file)
    assert stored is not None and stored.whiteouts == to
    other = "aufs" if to == "overlay" else "overlay"
    assert markers(root)[other] == 0
    assert pending(lay) is None
    assert not os.path.exists(lay.convert_dir)
    assert not [n for n in os.listdir(lay.private_dir) if "~" in n]
    if to == "overlay":
        assert housekeeping_of(root / "diff") == {}
        assert housekeeping_of(Path(lay.attic_dir)) == t.housekeeping
    else:
        assert housekeeping_of(root / "diff") == t.housekeeping
        assert not os.path.exists(lay.attic_dir)


def source_of(t: Template, to: str) -> Path:
    return t.aufs if to == "overlay" else t.overlay


def kill_points(t: Template, to: str, salt: int) -> list[int]:
    total = t.mutations[to]
    rng = random.Random(SEED + salt)
    # The very first steps, the tail (last layer, store.json flip, journal removal)
    # every other step, and random ones in between.
    points = {1, 2, *(total - k for k in range(0, 12, 2))}
    points.update(rng.sample(range(3, total - 12), TRIALS - len(points)))
    return sorted(points)


@pytest.mark.parametrize("to", ["overlay", "aufs"])
def test_killed_and_resumed(template: Template, tmp_path: Path, to: str) -> None:
    points = kill_points(template, to, 0 if to == "overlay" else 1)
    assert len(points) >= TRIALS
    pending_after_kill = 0
    for n, kill_at in enumerate(points):
        root = copy_store(source_of(template, to), tmp_path / f"trial{n}")
        assert run_child(root, to, kill_at) == SIGKILL, kill_at
        pending_after_kill += pending(Layout.at(root)) is not None
        check_killed(root, to, template)
        report = convert(root, to)
        assert report.target == to
        check_finished(root, to, template)
        shutil.rmtree(root)
    # Only the first few steps (lock, journal write) come before the journal exists.
    assert pending_after_kill >= len(points) - 3


@pytest.mark.parametrize("to", ["overlay", "aufs"])
def test_killed_twice(template: Template, tmp_path: Path, to: str) -> None:
    """The resumed run is killed too; a third run finishes."""
    total = template.mutations[to]
    rng = random.Random(SEED + 7 + len(to))
    for n in range(2):
        root = copy_store(source_of(template, to), tmp_path / f"trial{n}")
        first = rng.randrange(1, total)
        assert run_child(root, to, first) == SIGKILL
        assert run_child(root, to, rng.randrange(1, total)) in (SIGKILL, 0)
        check_killed(root, to, template)
        convert(root, to)
        check_finished(root, to, template)
        shutil.rmtree(root)


def test_killed_then_turned_back(template: Template, tmp_path: Path) -> None:
    """A conversion to overlay killed half-way, then undone by converting to aufs."""
    total = template.mutations["overlay"]
    for n, kill_at in enumerate((total // 3, (2 * total) // 3)):
        root = copy_store(template.aufs, tmp_path / f"trial{n}")
        assert run_child(root, "overlay", kill_at) == SIGKILL
        assert pending(Layout.at(root)) == "overlay"
        report = convert(root, "aufs")
        assert not report.resumed
        check_finished(root, "aufs", template)
        shutil.rmtree(root)
