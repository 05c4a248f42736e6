"""Resource faults: a store on a small loop-mounted ext4 that runs out of blocks or inodes.

Each fault must give a clean error (``OSError`` with ``ENOSPC``, possibly wrapped in one
of ours with the cause chained), leave every layer as it was and nothing half made, and
the store must work again once space is freed.
"""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from tests.conftest import require_engine
from tests.reliability import invariants, loopfs, scenarios

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    reason = loopfs.skip_reason()
    if reason:
        pytest.skip(reason)
    with loopfs.loop_fs(tmp_path, 24) as fs:
        yield fs


@pytest.fixture
def few_inodes_fs(tmp_path: Path) -> Iterator[Path]:
    reason = loopfs.skip_reason()
    if reason:
        pytest.skip(reason)
    with loopfs.loop_fs(tmp_path, 8, inodes=64) as fs:
        yield fs


def is_enospc(exc: BaseException) -> bool:
    """ENOSPC, raised as is or as the cause/context of the error that was raised."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def open_store(fs: Path, engine: str = "overlay") -> aufs.Driver:
    require_engine(engine)
    return aufs.init(fs / "store", [f"aufs.engine={engine}"])


def assert_sound_and_usable(root: Path, engine: str = "overlay") -> None:
    """A fresh init finds a sound store that creates, mounts, diffs and removes."""
    d = aufs.init(root, [f"aufs.engine={engine}"])
    try:
        assert invariants.store_problems(str(root)) == []
        ids = d.ids()
        d.create("after-fault", ids[0] if ids else "")
        path = d.get("after-fault")
        with open(os.path.join(path, "new"), "w") as f:
            f.write("works again\n")
        assert "A /new" in [str(c) for c in d.changes("after-fault")]
        d.put("after-fault")
        d.remove("after-fault")
    finally:
        d.cleanup()
    assert invariants.leak_problems(str(root)) == []


def tar_names(data: bytes) -> list[tuple[str, int]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.size) for m in tar.getmembers()]


# -- out of blocks / inodes: create and get ---------------------------------------------

def test_create_and_get_on_a_full_store(small_fs: Path) -> None:
    d = open_store(small_fs)
    try:
        d.create("base")
        scenarios.fill(d.layout.diff("base"), 16, random.Random(1))
        filler = loopfs.fill(small_fs)
        failures: list[BaseException] = []
        for n in range(64):
            try:
                d.create(f"l{n}", "base")
                d.get(f"l{n}")
                d.put(f"l{n}")
            except Exception as exc:
                failures.append(exc)
        assert failures, "nothing failed on a full filesystem: the test proves nothing"
        bad = [f"{type(e).__name__}: {e}" for e in failures if not is_enospc(e)]
        assert not bad, f"errors other than ENOSPC: {bad[:3]}"
        assert [i for i in d.ids() if d.mounted(i)] == []
        assert all(d.refcount(i) == 0 for i in d.ids())
        filler.unlink()
    finally:
        d.cleanup()
    assert_sound_and_usable(small_fs / "store")


def test_create_out_of_inodes(few_inodes_fs: Path) -> None:
    d = open_store(few_inodes_fs)
    try:
        for n in range(3):
            d.create(f"i{n}", f"i{n - 1}" if n else "")
        fillers = few_inodes_fs / "fillers"
        fillers.mkdir()
        n = 0
        while True:  # eat every inode left
            try:
                (fillers / str(n)).touch()
            except OSError:
                break
            n += 1
        errors: list[BaseException] = []
        for attempt in range(3):
            try:
                d.create(f"new{attempt}", "i2")
            except Exception as exc:
                errors.append(exc)
            if errors:  # then free one inode at a time: each step of create may fail
                (fillers / str(n - 1 - attempt)).unlink()
        assert errors, "a create succeeded without a free inode"
        bad = [f"{type(e).__name__}: {e}" for e in errors if not is_enospc(e)]
        assert not bad, bad
        assert invariants.store_problems(str(few_inodes_fs / "store")) == []
    finally:
        d.cleanup()
    shutil.rmtree(fillers)
    assert_sound_and_usable(few_inodes_fs / "store")


def test_init_on_a_full_store(small_fs: Path) -> None:
    """Opening a full store works, or fails with ENOSPC and leaves no mount behind."""
    d = open_store(small_fs)
    try:
        d.create("base")
        d.create("top", "base")
    finally:
        d.cleanup()
    filler = loopfs.fill(small_fs)
    try:
        d = open_store(small_fs)
    except Exception as exc:
        assert is_enospc(exc), f"{type(exc).__name__}: {exc}"
        assert "\n" not in str(exc)
    else:
        d.cleanup()
    assert invariants.mounts_under(str(small_fs / "store")) == []
    filler.unlink()
    assert_sound_and_usable(small_fs / "store")


# -- diff written to a file on the full filesystem --------------------------------------

def _big_layer(d: aufs.Driver) -> None:
    d.create("base")
    d.create("big", "base")
    rng = random.Random(7)
    for n in range(24):
        with open(os.path.join(d.layout.diff("big"), f"blob{n}"), "wb") as f:
            f.write(rng.randbytes(128 << 10))  # 3 MiB in all, incompressible


def test_diff_to_a_file_on_a_full_filesystem(small_fs: Path) -> None:
    d = open_store(small_fs)
    try:
        _big_layer(d)
        with d.diff("big") as stream:
            expected = tar_names(stream.read())
        d.get("big")  # a mounted layer, as Docker diffs a running container's layer
        before = invariants.snapshot(d.layout.diff("big"))
        filler = loopfs.fill(small_fs, leave=1 << 20)
        out = small_fs / "out.tar"
        with pytest.raises(OSError) as info, d.diff("big") as stream, open(out, "wb") as f:
            shutil.copyfileobj(stream, f)
            f.flush()
            os.fsync(f.fileno())
        assert is_enospc(info.value), info.value
        assert invariants.snapshot(d.layout.diff("big")) == before
        assert d.refcount("big") == 1 and d.mounted("big")
        out.unlink()
        filler.unlink()
        with d.diff("big") as stream, open(out, "wb") as f:
            shutil.copyfileobj(stream, f)
        assert tar_names(out.read_bytes()) == expected
        out.unlink()
        d.put("big")
    finally:
        d.cleanup()
    assert_sound_and_usable(small_fs / "store")


def test_diff_of_a_full_store_still_reads(small_fs: Path, tmp_path: Path) -> None:
    """Reading a layer needs no space: diff, changes and diff_size work on a full store."""
    d = open_store(small_fs)
    try:
        _big_layer(d)
        filler = loopfs.fill(small_fs)
        with d.diff("big") as stream:
            data = stream.read()
        assert len(tar_names(data)) == 24
        assert len(d.changes("big")) == 24
        assert d.diff_size("big") == 24 * (128 << 10)
        filler.unlink()
    finally:
        d.cleanup()


def test_cli_diff_to_a_full_filesystem_fails_in_one_line(small_fs: Path) -> None:
    d = open_store(small_fs)
    try:
        _big_layer(d)
    finally:
        d.cleanup()
    filler = loopfs.fill(small_fs, leave=1 << 20)
    out = small_fs / "out.tar"
    proc = subprocess.run(
        [sys.executable, "-m", "aufs", "--root", str(small_fs / "store"), "--engine",
         "overlay", "diff", "big", "-o", str(out)], capture_output=True, text=True,
        check=False)
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "space" in lines[0].lower(), lines[0]
    filler.unlink()
    assert invariants.mounts_under(str(small_fs / "store")) == []
    assert_sound_and_usable(small_fs / "store")


# -- apply_diff running out of space -----------------------------------------------------

def _apply_tar(megabytes: int) -> bytes:
    rng = random.Random(11)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in range(megabytes * 4):
            data = rng.randbytes(256 << 10)
            info = tarfile.TarInfo(f"dir{n % 3}/blob{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(".wh.old")
        tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


@pytest.mark.parametrize("leave_kib", [0, 256, 2048, 3900])
def test_apply_diff_runs_out_of_space(small_fs: Path, leave_kib: int) -> None:
    data = _apply_tar(4)
    d = open_store(small_fs)
    try:
        d.create("P")
        with open(os.path.join(d.layout.diff("P"), "old"), "w") as f:
            f.write("lower\n")
        d.create("L", "P")
        with open(os.path.join(d.layout.diff("L"), "mine"), "w") as f:
            f.write("the layer's own file\n")
        before = invariants.snapshot(d.layout.diff("L"))
        filler = loopfs.fill(small_fs, leave=leave_kib << 10)
        with pytest.raises(Exception) as info:
            d.apply_diff("L", "P", io.BytesIO(data))
        assert is_enospc(info.value), f"{type(info.value).__name__}: {info.value}"
        assert invariants.snapshot(d.layout.diff("L")) == before, invariants.snapshot_diff(
            before, invariants.snapshot(d.layout.diff("L")))
        assert os.listdir(d.layout.staging_dir) == []
        filler.unlink()
        size = d.apply_diff("L", "P", io.BytesIO(data))
        assert size == 16 * (256 << 10) + len("the layer's own file\n")
        names = {c.path for c in d.changes("L")}
        assert "/dir0/blob0" in names and "/old" in names and "/mine" in names
    finally:
        d.cleanup()
    assert_sound_and_usable(small_fs / "store")
