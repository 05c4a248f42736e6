"""Real daemons for tests: a private dockerd and a private docker-registry.

Each gets its own data root, exec root, socket, pidfile and port under a directory the test
owns, and is stopped (and what it mounted undone) when its context ends, even on failure.
Never the system's daemon: the client always talks to our own socket (``-H``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aufs._sys import libc, mountinfo
from aufs._sys import mount as sysmount

DOCKERD = shutil.which("dockerd")
DOCKER = shutil.which("docker")
REGISTRY = shutil.which("docker-registry")


def skip_reason_docker() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if DOCKERD is None or DOCKER is None:
        return "dockerd/docker not installed (apt-get install docker.io)"
    return None


def skip_reason_registry() -> str | None:
    if REGISTRY is None:
        return "docker-registry not installed (apt-get install docker-registry)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
              timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # Whatever it left in its process group (containerd, shims): gone with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _unmount_below(*paths: Path) -> None:
    for path in paths:
        real = os.path.realpath(path)
        for entry in reversed(list(mountinfo.mounts_under(real))):
            with contextlib.suppress(OSError):
                libc.umount2(entry.mountpoint, sysmount.MNT_DETACH)


@dataclass
class Dockerd:
    """A running private dockerd; ``run`` calls the docker client against it."""

    base: Path
    proc: subprocess.Popen[bytes]
    log: Path
    host: str
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, input: bytes | None = None, timeout: float = 180,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        assert DOCKER is not None
        p = subprocess.run([DOCKER, "-H", self.host, *args], input=input, capture_output=True,
                           timeout=timeout, env={**os.environ, **self.env}, check=False)
        if check and p.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({p.returncode}): "
                f"{p.stderr.decode(errors='replace')}\n--- dockerd log ---\n{_tail(self.log)}")
        return p

    def out(self, *args: str, input: bytes | None = None, timeout: float = 180) -> str:
        return self.run(*args, input=input, timeout=timeout).stdout.decode().strip()


@contextlib.contextmanager
def dockerd(base: Path, storage_driver: str, *, extra: Sequence[str] = (),
            experimental: bool = False, timeout: float = 60) -> Iterator[Dockerd]:
    """Start dockerd with everything of its own below ``base``; stop it on exit.

    ``base`` should be short: dockerd's exec root holds unix sockets (108-byte limit).
    """
    assert DOCKERD is not None
    base.mkdir(parents=True, exist_ok=True)
    data, exec_root = base / "data", base / "exec"
    sock, pidfile, log = base / "docker.sock", base / "docker.pid", base / "dockerd.log"
    config = base / "daemon.json"  # its own, not /etc/docker's
    config.write_text(json.dumps({"deprecated-key-path": str(base / "key.json")}))  # not in /etc
    argv = [DOCKERD, "--data-root", str(data), "--exec-root", str(exec_root),
            "-H", f"unix://{sock}", "--pidfile", str(pidfile), "--iptables=false",
            "--bridge=none", "--ip-masq=false", "-s", storage_driver,
            "--config-file", str(config), *extra]
    if experimental:
        argv.append("--experimental")
    with open(log, "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
    d = Dockerd(base, proc, log, f"unix://{sock}")
    try:
        _wait_for(lambda: d.run("version", timeout=10, check=False).returncode == 0,
                  "dockerd", proc, log, timeout)
        yield d
    finally:
        _stop(d.proc, 30)  # restart() may have replaced the first process
        _unmount_below(exec_root, data)


def restart(d: Dockerd, timeout: float = 60) -> None:
    """Stop ``d``'s dockerd and start it again with the same arguments, in place."""
    argv = d.proc.args
    assert isinstance(argv, list)
    _stop(d.proc, 30)
    with open(d.log, "ab") as logf:
        d.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                  start_new_session=True)
    _wait_for(lambda: d.run("version", timeout=10, check=False).returncode == 0,
              "dockerd", d.proc, d.log, timeout)


@dataclass
class Registry:
    """A running private docker-registry on 127.0.0.1."""

    base: Path
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def registry(base: Path, *, htpasswd: Path | None = None,
             timeout: float = 30) -> Iterator[Registry]:
    """Start docker-registry (distribution 2.8) with its own storage below ``base``;
    ``htpasswd`` turns on basic auth with that file."""
    assert REGISTRY is not None
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {base / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}")
    log = base / "registry.log"
    with open(log, "ab") as logf:
        proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=logf, start_new_session=True)

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        _wait_for(up, "docker-registry", proc, log, timeout)
        yield Registry(base, proc, port)
    finally:
        _stop(proc, 10)


def layer_diff_ids(archive: bytes) -> tuple[list[str], list[str]]:
    """A docker-archive's layers hashed here (sha256 of each uncompressed tar, in manifest
    order) and its config's ``rootfs.diff_ids``: equal iff the tars are the image's layers.
    ``docker load`` skips a layer whose chain id the daemon already has without reading its
    tar, so a load alone proves nothing about the tars."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None, name
            return f.read()
        manifest = json.loads(read("manifest.json"))[0]
        config = json.loads(read(manifest["Config"]))
        hashed = []
        for name in manifest["Layers"]:
            data = read(name)
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            hashed.append("sha256:" + hashlib.sha256(data).hexdigest())
        return hashed, list(config["rootfs"]["diff_ids"])
