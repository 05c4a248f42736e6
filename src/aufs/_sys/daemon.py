"""Daemons this process starts to serve a mount (FUSE servers): spawn, wait, reap.

A daemon runs in the foreground of a session of its own, as a child of this process: its
pid is known without looking through /proc, and stays its own until it is reaped here (a
zombie keeps the number, so a pidfd opened on an unreaped child names the right process).
The mount is ready when the target becomes a mount point; the wait for that sleeps in
``poll`` on ``/proc/self/mountinfo`` (the kernel wakes it on every mount-table change) and
on the daemon's pidfd (a daemon that exits first has failed; its stderr, kept in a memfd,
says why). Measured against the daemon forking itself into the background and the
caller waiting for the forking parent: one fork fewer, and no search for the daemon.

Daemons outlive the process that started them (they are reparented when it exits); one
unmounted by another process is reaped by :func:`reap_exited` on the next spawn.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Sequence

from aufs._sys import libc

_children: set[int] = set()
_children_lock = threading.Lock()

_STDERR_KEPT = 1 << 16  # bytes of a failed daemon's stderr put in the error


def spawn_mount(argv: Sequence[str], target: str, timeout: float) -> int:
    """Run ``argv`` (its first word a path) as a daemon that mounts ``target``; return its
    pid once ``target`` is a mount point. OSError if it exits first or takes longer than
    ``timeout`` seconds (then it is killed)."""
    before = libc.cached_dev(target)
    table = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    err = os.memfd_create("daemon-stderr", os.MFD_CLOEXEC)
    pidfd = -1
    try:
        try:
            # A bytes copy: posix_spawn converts os.environ itself 50 us slower.
            pid = os.posix_spawn(argv[0], list(argv), dict(os.environb), setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ])
        except OSError as exc:
            raise OSError(exc.errno, f"cannot run {argv[0]}: {exc.strerror}") from exc
        with _children_lock:
            _children.add(pid)
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(table, select.POLLPRI)  # POLLERR|POLLPRI: the mount table changed
        poller.register(pidfd, select.POLLIN)   # the daemon exited
        deadline = time.monotonic() + timeout
        while libc.cached_dev(target) == before:  # no round trip to the new daemon
            left = deadline - time.monotonic()
            events = poller.poll(max(left, 0) * 1000) if left > 0 else []
            if any(fd == pidfd for fd, _ in events):
                reap([pidfd], 0)
                pidfd = -1
                raise OSError(0, _failure(err, argv[0]))
            if not events:
                reap([pidfd], 0)  # kills it
                pidfd = -1
                raise OSError(0, f"{argv[0]} did not mount {target} in {timeout:g} s")
        return pid
    finally:
        for fd in (table, err, pidfd):
            if fd >= 0:
                os.close(fd)


def _failure(err: int, program: str) -> str:
    os.lseek(err, 0, os.SEEK_SET)
    text = os.read(err, _STDERR_KEPT).decode(errors="replace")
    lines = [ln for ln in text.splitlines() if "unknown argument ignored" not in ln]
    return " ".join(lines).strip() or f"{program} exited before mounting"


def child_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` if it is a daemon this process started and has not reaped."""
    with _children_lock:
        if pid not in _children:
            return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        # Still our child (not reaped by anyone)? Then the number cannot have been reused.
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        os.close(fd)
        with _children_lock:
            _children.discard(pid)
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
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # not a child, or reaped already
        return
    if result is None:
        return
    with _children_lock:
        if result.si_pid not in _children:
            return
        _children.discard(result.si_pid)
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)


def reap_exited() -> None:
    """Reap the daemons of ours that have exited (unmounted by another process)."""
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        try:
            done = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG) is not None
        except ChildProcessError:
            done = True
        if done:
            with _children_lock:
                _children.discard(pid)
