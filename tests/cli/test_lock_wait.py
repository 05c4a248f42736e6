"""A command that waits for the store lock says so, and who holds it (after 1 s)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.cli.kit import Aufs


def test_a_wait_for_the_store_lock_is_told_with_its_holder(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    cli.ok("create", "base")
    # The holder keeps the lock until told (its stdin closes), not for a fixed time: a
    # loaded machine must not decide whether the waiter had to wait long enough to speak.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "sys.stdin.read()\n", str(cli.root / ".aufs" / "lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    release = threading.Timer(60, holder.stdin.close)  # never wait forever
    waiter: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout.readline() == "held\n"
        waiter = cli.popen("create", "top", "--parent", "base")
        assert waiter.stderr is not None
        release.start()
        first = waiter.stderr.readline()  # told while it waits (the holder still holds)
        assert "waiting for the store lock" in first and f"pid {holder.pid}" in first, first
        holder.stdin.close()
        _, rest = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, first + rest
        assert "waiting for the store lock" not in rest  # said once
    finally:
        release.cancel()
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
        holder.kill()
        holder.wait()
        holder.stdout.close()
        cli.ok("cleanup")


def test_no_word_when_the_lock_is_free(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    try:
        assert cli.ok("create", "base").err == ""
    finally:
        cli.ok("cleanup")


def test_holders_reads_proc_locks(tmp_path: Path) -> None:
    from aufs.store.lock import holders

    path = tmp_path / "lock"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    try:
        assert holders(str(path)) == []
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert holders(str(path)) == [os.getpid()]
    finally:
        os.close(fd)
