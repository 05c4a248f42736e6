"""The fuse-overlayfs daemon as a child of ours (``aufs._sys.daemon``): started in the
foreground in a session of its own, found without a /proc scan, reaped, never left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aufs
from aufs._sys import daemon, libc
from aufs._sys.mount import MountError
from aufs.union import fuse_overlayfs
from tests.cli.kit import REPO
from tests.conftest import fuse_daemons_below, mounts_below, require_engine


@pytest.fixture
def fuse(store_root: Path) -> Iterator[aufs.Driver]:
    require_engine("fuse-overlayfs")
    d = aufs.init(store_root, ["aufs.engine=fuse-overlayfs"])
    try:
        d.create("base")
        Path(d.layout.diff("base"), "f").write_text("lower")
        d.create("top", "base")
        yield d
    finally:
        d.cleanup()


def _stat_field(pid: int, index: int) -> int:
    """A numeric field of /proc/PID/stat (1-based as in proc(5))."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        after_comm = f.read().rsplit(b")", 1)[1].split()
    return int(after_comm[index - 3])


def _gone_or_zombie(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except FileNotFoundError:
        return "gone"


def test_the_daemon_is_our_child_in_a_session_of_its_own(fuse: aufs.Driver) -> None:
    mnt = fuse.get("top")
    (pid,) = fuse_daemons_below(mnt)
    assert _stat_field(pid, 4) == os.getpid()   # ppid: ours, no daemonizing fork
    assert _stat_field(pid, 6) == pid           # session leader: no terminal's Ctrl-C
    assert os.readlink(f"/proc/{pid}/cwd") == "/"  # keeps no directory of ours busy
    assert daemon._children[pid] == mnt  # registered: unmount needs no /proc scan
    assert os.listdir(mnt) == ["f"]
    fuse.put("top")
    assert _gone_or_zombie(pid) == "gone"      # waited for and reaped, no zombie
    assert pid not in daemon._children


def test_a_dead_daemon_is_replaced_on_get(fuse: aufs.Driver, store_root: Path) -> None:
    mnt = fuse.get("top")
    (pid,) = fuse_daemons_below(mnt)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError):
        os.listdir(mnt)  # ENOTCONN: the mount is still there, its daemon is not
    assert fuse.mounted("top")
    assert fuse.get("top") == mnt
    assert os.listdir(mnt) == ["f"]
    assert fuse.refcount("top") == 1  # the dead holder's count was void
    assert len(fuse_daemons_below(mnt)) == 1
    os.kill(fuse_daemons_below(mnt)[0], signal.SIGKILL)
    fuse.put("top")  # a put on a dead mount unmounts it
    assert not fuse.mounted("top") and mounts_below(store_root / "mnt") == []
    fuse.get("top")
    os.kill(fuse_daemons_below(mnt)[0], signal.SIGKILL)
    fuse.cleanup()  # cleanup copes with a dead mount too
    assert mounts_below(store_root) == [] and fuse_daemons_below(store_root) == []
    assert _gone_or_zombie(pid) == "gone"  # the killed daemons were reaped


def test_the_unmount_finds_its_daemon_without_a_scan(fuse: aufs.Driver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    mnt = fuse.get("top")
    (pid,) = fuse_daemons_below(mnt)

    def no_scan(target: str) -> list[int]:
        raise AssertionError("scanned /proc for a daemon of our own")

    monkeypatch.setattr(fuse_overlayfs, "daemon_pids", no_scan)
    fuse.put("top")
    assert _gone_or_zombie(pid) == "gone" and mounts_below(mnt) == []


def test_a_daemon_unmounted_by_another_process_is_reaped(fuse: aufs.Driver) -> None:
    mnt = fuse.get("top")
    (pid,) = fuse_daemons_below(mnt)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", "import sys, aufs; aufs.unmount(sys.argv[1])", mnt],
                   env=env, check=True, timeout=60)
    deadline = time.monotonic() + 10
    while _gone_or_zombie(pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone_or_zombie(pid) == "Z"  # exited; only its parent (we) can reap it
    fuse.get("top")                     # the next mount reaps what has exited
    assert _gone_or_zombie(pid) == "gone"
    fuse.put("top")


def test_unmount_takes_the_mount_on_top(fuse: aufs.Driver) -> None:
    """``aufs.unmount`` goes by the mount umount2 removes, the one on top: a tmpfs over a
    FUSE union is unmounted as a tmpfs, and the union's daemon goes on serving it (taken
    for the union's unmount, the daemon was waited for, then killed)."""
    mnt = fuse.get("top")
    (pid,) = fuse_daemons_below(mnt)
    libc.mount("tmpfs", mnt, "tmpfs", 0, "size=1m")
    aufs.unmount(mnt)
    assert Path(mnt, "f").read_text() == "lower"
    assert _gone_or_zombie(pid) not in ("gone", "Z")
    fuse.put("top")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids ``os.posix_spawn`` returns during the test."""
    pids: list[int] = []
    real = os.posix_spawn

    def recording(*args: Any, **kwargs: Any) -> int:
        pid = real(*args, **kwargs)
        pids.append(pid)
        return pid

    monkeypatch.setattr(os, "posix_spawn", recording)
    return pids


def test_a_daemon_that_fails_says_why_and_is_gone(tmp_path: Path, spawned: list[int]) -> None:
    require_engine("fuse-overlayfs")
    target = tmp_path / "m"
    target.mkdir()
    binary = shutil.which("fuse-overlayfs")
    assert binary is not None
    argv = [binary, "-f", "-o", f"lowerdir={tmp_path}/missing", str(target)]
    with pytest.raises(OSError) as info:
        daemon.spawn_mount(argv, str(target), 10)
    assert "missing" in str(info.value) or "No such file" in str(info.value)
    (pid,) = spawned
    assert mounts_below(target) == [] and _gone_or_zombie(pid) == "gone"
    assert pid not in daemon._children


def test_a_daemon_that_never_mounts_is_killed(tmp_path: Path, spawned: list[int]) -> None:
    started = time.monotonic()
    with pytest.raises(OSError, match="did not mount"):
        daemon.spawn_mount(["/bin/sleep", "60"], str(tmp_path), 0.3)
    assert time.monotonic() - started < 5
    (pid,) = spawned
    assert _gone_or_zombie(pid) == "gone" and pid not in daemon._children  # killed, reaped


def test_an_interrupted_wait_kills_the_daemon(tmp_path: Path, spawned: list[int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = libc.cached_dev

    def interrupted(path: str) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first call is the "before"; then ^C in the wait
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(libc, "cached_dev", interrupted)
    with pytest.raises(KeyboardInterrupt):
        daemon.spawn_mount(["/bin/sleep", "60"], str(tmp_path), 30)
    (pid,) = spawned
    assert _gone_or_zombie(pid) == "gone" and pid not in daemon._children


def test_the_daemon_gets_none_of_our_descriptors(fuse: aufs.Driver) -> None:
    r, w = os.pipe()  # inheritable, like a pipe from the caller's shell
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    try:
        mnt = fuse.get("top")
        (pid,) = fuse_daemons_below(mnt)
        fds = {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
        assert r not in fds and w not in fds, fds
        with open(f"/proc/{pid}/status") as f:
            ignored = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigIgn:"))
        assert not ignored & (1 << (signal.SIGPIPE - 1))  # default, as subprocess gives
        fuse.put("top")
    finally:
        os.close(r)
        os.close(w)


def test_put_of_a_layer_with_nothing_mounted(fuse: aufs.Driver,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale count (holders that died) and a put with no mount: no error, no /proc scan,
    no unmount attempted (fusermount3 -u would fail on it)."""
    mnt = fuse.get("top")
    fuse.put("top")
    from aufs.store import refs
    refs.write(fuse.layout.refs("top"), 2)

    def no_unmount(target: str, rw: str | None = None) -> None:
        raise AssertionError(f"unmount of {target}, where nothing is mounted")

    monkeypatch.setattr(fuse.engine, "unmount", no_unmount)
    fuse.put("top")
    fuse.put("top")
    assert fuse.refcount("top") == 0 and mounts_below(mnt) == []


def _orphan_daemon(d: aufs.Driver, id: str) -> subprocess.Popen[bytes]:
    """What a ``get`` killed half way leaves: a fuse-overlayfs daemon for the layer's
    mount point that has not mounted yet. Made slow on purpose: a process that looks
    like the daemon (its argv) and turns into the real one after 0.4 s."""
    branches = d._branches(id, d.parents(id), "")
    os.makedirs(branches.work, exist_ok=True)
    (spec,) = fuse_overlayfs.fuse_specs(branches, d.engine.caps)  # type: ignore[attr-defined]
    assert spec.argv is not None
    late = ("import os, sys, time; time.sleep(0.4); "
            f"os.execv({spec.argv[0]!r}, ['fuse-overlayfs', *sys.argv[1:]])")
    proc = subprocess.Popen(["fuse-overlayfs", "-c", late, *spec.argv[1:]],
                            executable=sys.executable, start_new_session=True)
    deadline = time.monotonic() + 5
    while not fuse_overlayfs.daemon_pids(branches.target):  # argv shows a moment after exec
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.001)
    return proc


@pytest.mark.parametrize("call", ["put", "get", "cleanup"])
def test_a_killed_gets_daemon_never_mounts_behind_our_back(fuse: aufs.Driver,
                                                          call: str) -> None:
    """A get killed while mounting leaves its mark in the count file; ``put`` and
    ``cleanup`` with nothing mounted, and ``get`` about to mount, then stop the daemon
    still starting at the mount point: it cannot mount after the put or cleanup (a leaked
    union) or on top of the new one (a put would then unmount only the top)."""
    mnt = fuse.layout.mnt("top")
    proc = _orphan_daemon(fuse, "top")
    Path(fuse.layout.refs("top")).write_text("0 m\n")  # what the dead get wrote
    try:
        if call == "put":
            fuse.put("top")
        elif call == "cleanup":
            fuse.cleanup()
        else:
            assert fuse.get("top") == mnt
        time.sleep(1.0)  # time enough for a live daemon to mount
        assert proc.poll() is not None, "the orphan daemon still runs"
        expected = 1 if call == "get" else 0
        assert len(mounts_below(mnt)) == expected, mounts_below(mnt)
        if call == "get":
            assert (Path(mnt) / "f").read_text() == "lower"
            fuse.put("top")
            assert mounts_below(mnt) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_missing_program_is_a_mount_error(fuse: aufs.Driver,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    caps = fuse.engine.caps  # type: ignore[attr-defined]
    monkeypatch.setattr(fuse.engine, "caps",
                        type(caps)(binary="/nonexistent/fuse-overlayfs",
                                   fusermount=caps.fusermount, as_root=caps.as_root))
    with pytest.raises(MountError, match="cannot run /nonexistent/fuse-overlayfs"):
        fuse.get("top")
    assert not fuse.mounted("top") and fuse.refcount("top") == 0


def test_the_readiness_check_never_waits_for_the_daemon(fuse: aufs.Driver) -> None:
    """``cached_dev`` answers from the kernel even when the daemon does not answer at all:
    the mount wait costs no round trip to a daemon still starting."""
    mnt = fuse.get("top")
    (pid,) = fuse_daemons_below(mnt)
    os.kill(pid, signal.SIGSTOP)
    try:
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(libc.cached_dev(mnt)), daemon=True)
        t.start()
        t.join(5)
        assert result, "cached_dev blocked on a stopped FUSE daemon"
        assert result[0] != os.lstat(os.path.dirname(mnt)).st_dev
    finally:
        os.kill(pid, signal.SIGCONT)
    fuse.put("top")


@pytest.mark.parametrize("path", ["/", "/proc", "/dev", "/sys", "."])
def test_cached_dev_is_lstat_dev(path: str) -> None:
    assert libc.cached_dev(path) == os.lstat(path).st_dev


def test_cached_dev_of_a_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        libc.cached_dev(str(tmp_path / "nope"))
