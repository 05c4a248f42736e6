"""A command that waits for the store lock says so, and who holds it (after 1 s)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.kit import Aufs


def test_a_wait_for_the_store_lock_is_told_with_its_holder(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    cli.ok("create", "base")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "time.sleep(2.5)\n", str(cli.root / ".aufs" / "lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        start = time.monotonic()
        r = cli.run("create", "top", "--parent", "base")
        waited = time.monotonic() - start
        assert r.code == 0, r.err
        assert waited > 1.0
        lines = [line for line in r.err_lines if "waiting for the store lock" in line]
        assert len(lines) == 1, r.err
        assert f"pid {holder.pid}" in lines[0]
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
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
