"""Daemons this process starts to serve a mount (FUSE servers): spawn, wait, reap.

A daemon runs in the foreground of a session of its own, as a child of this process: its
pid is known without looking through /proc, and stays its own until it is reaped here (a
zombie keeps the number, so a pidfd opened on an unreaped child names the right process).
Each child is registered with a tag (its mount point), so a number reused by a later
daemon of ours is never taken for an earlier one.

The mount is ready when the target's device changes; the wait for that sleeps in ``poll``
on ``/proc/self/mountinfo`` (the kernel wakes it on every mount-table change) and on the
daemon's pidfd (a daemon that exits first has failed; its stderr, kept in a memfd, says
why). Compared with the daemon forking itself into the background while the caller waits
for the forking parent: one fork fewer, and no search for the daemon afterwards.

The child gets what ``subprocess`` would give it: stdin/stdout on /dev/null, no file
descriptor of ours beyond those, default SIGPIPE/SIGXFSZ (Python ignores SIGPIPE), an
empty signal mask. A daemon outlives the process that started it (it is reparented when
that exits); one unmounted by another process is reaped by :func:`reap_exited`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import threading
import time
from collections.abc import Sequence

from aufs._sys import libc

_children: dict[int, str] = {}  # pid -> tag, for the daemons of ours not reaped yet
_children_lock = threading.Lock()

_STDERR_KEPT = 1 << 16  # bytes of a failed daemon's stderr put in the error
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def spawn_mount(argv: Sequence[str], target: str, timeout: float) -> int:
    """Run ``argv`` (its first word a path) as a daemon that mounts ``target``; return its
    pid once ``target`` is a mount point (the daemon is registered with ``target`` as its
    tag). OSError if it exits first or takes longer than ``timeout`` seconds; on any
    failure, the interrupt included, the daemon is killed and reaped."""
    before = libc.cached_dev(target)
    table = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    err = -1
    pidfd = -1
    try:
        err = os.memfd_create("daemon-stderr", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            pid = os.posix_spawn(argv[0], list(argv), _environment(), setsid=True,
                                 setsigmask=(), setsigdef=_DEFAULT_SIGNALS,
                                 file_actions=_file_actions(err))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            pidfd = os.pidfd_open(pid)  # before anyone may reap it: it names our child
        except BaseException:
            _kill_and_reap_pid(pid)
            raise
        with _children_lock:
            _children[pid] = target
        try:
            _wait_mounted(argv[0], target, before, table, pidfd, err, timeout)
        except BaseException:
            _kill(pid)
            fd, pidfd = pidfd, -1
            reap([fd], 1.0)
            raise
        _quiet(err)
        return pid
    finally:
        for fd in (table, err, pidfd):
            if fd >= 0:
                os.close(fd)


def _wait_mounted(program: str, target: str, before: int, table: int, pidfd: int, err: int,
                  timeout: float) -> None:
    poller = select.poll()
    poller.register(table, select.POLLPRI)  # POLLERR|POLLPRI: the mount table changed
    poller.register(pidfd, select.POLLIN)   # the daemon exited
    deadline = time.monotonic() + timeout
    while libc.cached_dev(target) == before:  # statx DONT_SYNC: never waits for the daemon
        left = deadline - time.monotonic()
        events = poller.poll(max(left, 0) * 1000) if left > 0 else []
        if any(fd == pidfd for fd, _ in events):
            raise OSError(0, _failure(err, program))
        if not events:
            raise OSError(0, f"{program} did not mount {target} in {timeout:g} s")


def _environment() -> dict[bytes, bytes]:
    # A plain bytes dict: given os.environ, posix_spawn converts it through the mapping's
    # Python methods (50 us). os.environb keeps one in ``_data`` (CPython, POSIX); copying
    # that is a C dict copy. A name that posix_spawn refuses (empty, or with "=") is left
    # out rather than failing the mount.
    data = getattr(os.environb, "_data", None)
    env: dict[bytes, bytes] = dict(data) if isinstance(data, dict) else dict(os.environb)
    if b"" in env or b"=" in b"\0".join(env):
        env = {k: v for k, v in env.items() if k and b"=" not in k}
    return env


def _file_actions(err: int) -> list[tuple[int | str, ...]]:
    """stdin/stdout on /dev/null, stderr into ``err``, and every other descriptor this
    process has without close-on-exec closed (``subprocess``'s ``close_fds``)."""
    actions: list[tuple[int | str, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, err, 2),
    ]
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd == err:
            continue
        with contextlib.suppress(OSError):  # the listing's own fd, closed by now
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _quiet(err: int) -> None:
    """The daemon keeps writing its stderr into ``err`` for as long as it runs: empty it
    and seal it against growth, so that what it logs later costs no memory."""
    with contextlib.suppress(OSError):
        os.ftruncate(err, 0)
        fcntl.fcntl(err, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)


def _failure(err: int, program: str) -> str:
    os.lseek(err, 0, os.SEEK_SET)
    text = os.read(err, _STDERR_KEPT).decode(errors="replace")
    lines = [ln for ln in text.splitlines() if "unknown argument ignored" not in ln]
    return " ".join(lines).strip() or f"{program} exited before mounting"


def _kill(pid: int) -> None:
    """SIGKILL the daemon's process group (it leads one: setsid), helpers it started
    (``fusermount3``) included. Only for an unreaped child: the number is still ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _kill_and_reap_pid(pid: int) -> None:
    _kill(pid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def child_pidfd(tag: str) -> int | None:
    """A pidfd for the daemon this process started with ``tag`` (the newest, if several)
    and has not reaped; None if there is none."""
    with _children_lock:
        pid = next((p for p, t in reversed(_children.items()) if t == tag), None)
        if pid is None:
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # reaped by someone else's waitpid(-1)
            del _children[pid]
            return None
        try:
            # Still a child of ours (not reaped by someone else's waitpid(-1), the number
            # then free for another process): then it is the one we registered.
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            os.close(fd)
            del _children[pid]
            return None
        return fd


def open_pidfds(pids: Sequence[int]) -> list[int]:
    """pidfds for those of ``pids`` still running: they name the process, not the number."""
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    return fds


def _wait(pidfd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(seconds, 0) * 1000))


def reap(pidfds: Sequence[int], timeout: float) -> None:
    """Wait until each process has exited; one still running after ``timeout`` seconds is
    killed (a daemon is never left behind). Children of ours are reaped. Closes the pidfds."""
    deadline = time.monotonic() + timeout
    try:
        for fd in pidfds:
            if not _wait(fd, deadline - time.monotonic()):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                _wait(fd, 1.0)
            _collect(fd)
    finally:
        for fd in pidfds:
            os.close(fd)


def _collect(pidfd: int) -> None:
    """Reap the exited process behind ``pidfd`` if it is a daemon of ours (and only then:
    other children belong to whoever started them)."""
    with _children_lock:
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # not a child, or reaped already
            return
        if result is None or result.si_pid not in _children:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        del _children[result.si_pid]


def reap_exited() -> None:
    """Reap the daemons of ours that have exited (unmounted by another process)."""
    with _children_lock:  # wait and forget together: no number reused in between
        for pid in list(_children):
            try:
                done = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG) is not None
            except ChildProcessError:
                done = True
            if done:
                del _children[pid]
