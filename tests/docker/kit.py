"""Helpers for the Docker tests: a busybox root fs, the plugin as a real subprocess."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cli.kit import REPO

PLUGINS_DIR = "/run/docker/plugins"
STATE_DIR = "/run/aufs/docker-plugin"
BUSYBOX = shutil.which("busybox")
APPLETS = ("sh", "echo", "cat", "ls", "mkdir", "rm", "ln", "cp", "chmod", "true", "sleep",
           "dd", "touch", "mv", "stat", "find", "readlink", "head", "seq", "sync",
           "md5sum", "sort", "test", "xargs", "wc", "id")


def skip_reason_busybox() -> str | None:
    if BUSYBOX is None:
        return "busybox not installed (apt-get install busybox-static)"
    return None


def unique_name(prefix: str = "aufs-t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
    ti.mtime = 1_600_000_000
    return ti


def rootfs_tar() -> bytes:
    """A tiny root fs: static busybox, its applets as symlinks, the usual directories."""
    assert BUSYBOX is not None
    data = Path(BUSYBOX).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "var/lib",
                  "usr", "usr/share", "usr/share/doc", "usr/share/doc/base"):
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for applet in APPLETS:
            tar.addfile(_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, text in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", b"root:x:0:\n"),
                           ("etc/motd", b"hello from the base image\n"),
                           ("usr/share/doc/base/README", b"doc\n" * 100)):
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(text)), io.BytesIO(text))
    return buf.getvalue()


# -- the plugin, as `python -m aufs docker-plugin` --------------------------------------

def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def call(sock: str, method: str, body: bytes | dict[str, Any] | None = None,
         query: str = "", timeout: float = 60) -> tuple[int, bytes]:
    """POST to the plugin over its unix socket (http.client on AF_UNIX)."""
    conn = UnixHTTPConnection(sock, timeout)
    try:
        raw = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        conn.request("POST", f"/{method}{query}", body=raw,
                     headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


@dataclass
class Plugin:
    """A running ``aufs docker-plugin`` process."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def sock(self) -> str:
        return f"{PLUGINS_DIR}/{self.name}.sock"

    def start(self, timeout: float = 20) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=logf, env=_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the plugin exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                if call(self.sock, "Plugin.Activate", timeout=2)[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the plugin did not come up:\n{self.log.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def plugin(name: str, log: Path, *args: str) -> Iterator[Plugin]:
    """Run the plugin ``name`` (extra CLI arguments ``args``); stop it and remove its
    socket and state file afterwards, whatever happened."""
    argv = [sys.executable, "-m", "aufs", "docker-plugin", "--name", name, *args]
    p = Plugin(name, argv, log, subprocess.Popen(["true"]))
    p.proc.wait()
    try:
        p.start()
        yield p
    finally:
        p.stop()
        for leftover in (p.sock, f"{STATE_DIR}/{name}.json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
