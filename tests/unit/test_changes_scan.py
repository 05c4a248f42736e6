"""``layer_changes`` answers the same whether it looks each name up in the parents
(``lstat``) or lists the parents' directory once (``SCAN_AFTER``), on random layers."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from aufs._sys.files import rmtree
from aufs.archive import Change, ChangeKind, changes
from aufs.archive.changes import layer_changes
from aufs.whiteout import AUFS, OVERLAY, WhiteoutFormat
from tests.unit.test_changes import opaque, whiteout

ROOT = os.geteuid() == 0
NAMES = ("a", "b", "c", "d", "e")
T = 1_600_000_000


def _fill(rng: random.Random, d: Path, depth: int, formats: list[WhiteoutFormat]) -> None:
    """Random entries from a small set of names, so that layers collide often."""
    d.mkdir(exist_ok=True)
    for name in NAMES:
        roll = rng.random()
        fmt = rng.choice(formats)
        if roll < 0.25:
            (d / name).write_text(name)
        elif roll < 0.45 and depth > 0:
            _fill(rng, d / name, depth - 1, formats)
        elif roll < 0.55:
            (d / name).symlink_to("a")
        elif roll < 0.7:
            whiteout(fmt, d, name)
        elif roll < 0.75:  # a whiteout beside the name it whites out (same layer)
            (d / name).write_text(name)
            whiteout(AUFS, d, name)
        elif roll < 0.78 and ROOT:
            os.mknod(d / name, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a device, kept
    if rng.random() < 0.1:
        opaque(rng.choice(formats), d)
    if rng.random() < 0.05:
        (d / ".wh..wh.plnk").mkdir()
    mtime = T + rng.choice((0, 0, 7))
    os.utime(d, (mtime, mtime))


def _layers(tmp_path: Path, seed: int) -> tuple[list[str], str]:
    rng = random.Random(seed)
    formats: list[WhiteoutFormat] = [AUFS, OVERLAY] if ROOT else [AUFS]
    lowers = []
    for i in range(rng.choice((1, 1, 2, 3))):
        low = tmp_path / f"low{i}"
        _fill(rng, low, 3, formats)
        lowers.append(str(low))
    rw = tmp_path / "rw"
    _fill(rng, rw, 3, formats)
    return lowers, str(rw)


def _answers(monkeypatch: pytest.MonkeyPatch, lowers: list[str], rw: str,
             ) -> dict[int | None, list[Change]]:
    out = {}
    for after in (None, 0, 1, 3, -1):
        monkeypatch.setattr(changes, "SCAN_AFTER", after)
        out[after] = layer_changes(lowers, rw)
    return out


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("held", [0, 1, 2])
def test_directories_opened_by_path_or_relative_agree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, held: int) -> None:
    """Subdirectories open relative to their parent's fd while fewer than HELD levels
    are held open, by path below: the answer is the same, and no fd is left open."""
    lowers, rw = _layers(tmp_path, seed)
    fds = os.listdir("/proc/self/fd")
    relative = layer_changes(lowers, rw)
    monkeypatch.setattr(changes, "HELD", held)
    assert layer_changes(lowers, rw) == relative
    assert os.listdir("/proc/self/fd") == fds


def test_an_error_inside_the_walk_closes_the_held_fds(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    low, rw = tmp_path / "low", tmp_path / "rw"
    for top in (low, rw):
        (top / "a" / "b" / "c").mkdir(parents=True)
    (rw / "a" / "b" / "c" / "f").write_text("")

    def union_names(lows: list[str]) -> set[str]:
        raise OSError("the parents' directory cannot be listed")

    monkeypatch.setattr(changes, "SCAN_AFTER", 0)  # c's file: the parents' listing
    monkeypatch.setattr(changes, "_union_names", union_names)
    fds = os.listdir("/proc/self/fd")
    with pytest.raises(OSError, match="cannot be listed"):
        layer_changes([str(low)], str(rw))
    assert os.listdir("/proc/self/fd") == fds


@pytest.mark.parametrize("seed", range(40))
def test_scan_and_lookups_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                seed: int) -> None:
    lowers, rw = _layers(tmp_path, seed)
    answers = _answers(monkeypatch, lowers, rw)
    lookups = answers[None]
    for after, answer in answers.items():
        assert answer == lookups, f"SCAN_AFTER={after}"
    assert lookups == sorted(lookups, key=lambda c: (c.path, c.kind))


def test_scan_of_a_large_parent_directory(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget from the parent directory's size: 600 names to look up in a parent of
    1,000 lists it (and says the same as 600 lookups)."""
    low, rw = tmp_path / "low", tmp_path / "rw"
    (low / "d").mkdir(parents=True)
    (rw / "d").mkdir(parents=True)
    for i in range(1000):
        (low / "d" / f"f{i:04d}").write_text("")
    for i in range(0, 1200, 2):
        (rw / "d" / f"f{i:04d}").write_text("x")
    whiteout(AUFS, low / "d", "f0002")  # in the parent's own layer: no effect there
    answers = _answers(monkeypatch, [str(low)], str(rw))
    expected = [Change("/d", ChangeKind.MODIFY)] + [
        Change(f"/d/f{i:04d}", ChangeKind.MODIFY if i < 1000 else ChangeKind.ADD)
        for i in range(0, 1200, 2)]
    for after, answer in answers.items():
        assert answer == expected, f"SCAN_AFTER={after}"
    listed = []
    real = changes._union_names

    def union_names(lows: list[str]) -> set[str]:
        listed.append(lows)
        return real(lows)

    monkeypatch.setattr(changes, "SCAN_AFTER", -1)
    monkeypatch.setattr(changes, "_union_names", union_names)
    assert layer_changes([str(low)], str(rw)) == expected
    assert listed == [[str(low / "d")]]


def _nest(top: Path, depth: int) -> None:
    """``top/d/d/…/d``, ``depth`` levels deep, made fd by fd (the path is past
    PATH_MAX), with two files at the bottom."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.utime(fd, (T, T))  # the parents' directories compare equal
            os.close(fd)
            fd = sub
        for name in ("same", "gone"):
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.utime(fd, (T, T))
    finally:
        os.close(fd)


@pytest.mark.parametrize("after", [None, 0])
def test_deep_layer_over_a_deep_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       after: int | None) -> None:
    """Both trees 1,100 deep (paths past deep.LIMIT, re-rooted at /proc/self/fd): looked up
    and listed alike."""
    depth = 1100
    low, rw = tmp_path / "low", tmp_path / "rw"
    low.mkdir()
    rw.mkdir()
    _nest(low, depth)
    _nest(rw, depth)
    fd = os.open(rw, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.unlink("gone", dir_fd=fd)
        AUFS.make_whiteout(fd, "gone")
        os.close(os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.utime(fd, (T, T))
    finally:
        os.close(fd)
    monkeypatch.setattr(changes, "SCAN_AFTER", after)
    bottom = "/d" * depth
    try:
        assert layer_changes([str(low)], str(rw)) == [
            Change(bottom, ChangeKind.MODIFY), Change(bottom + "/gone", ChangeKind.DELETE),
            Change(bottom + "/new", ChangeKind.ADD),
            Change(bottom + "/same", ChangeKind.MODIFY)]
    finally:  # pytest's own clean-up of old tmp dirs recurses
        rmtree(str(low))
        rmtree(str(rw))
