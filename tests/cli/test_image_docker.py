"""Images through a real dockerd and podman: ``docker save`` → ``aufs import`` → ``aufs
export`` (docker-archive, OCI) → ``docker load`` / ``podman load`` → the same config, the
same layers, and ``docker run`` prints what the original printed.

One private dockerd for the module (tests/daemons.py); the original image is made in it
from a busybox rootfs (``docker import`` with CMD, ENV, WORKDIR) plus a committed layer
(LABEL, USER). podman runs with its own ``--root``/``--runroot`` under tmp.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import daemons
from tests.cli.kit import Aufs

BUSYBOX = shutil.which("busybox")
PODMAN = shutil.which("podman")
TAG = "interop:3"
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels")
EXPECTED_OUTPUT = "hi bar\n/srv\nlayer two\n1000\n"


@dataclass
class Original:
    d: daemons.Dockerd
    saved: Path
    inspect: dict[str, Any]
    history: list[dict[str, Any]]
    output: str


def _busybox_rootfs(path: Path) -> None:
    assert BUSYBOX is not None
    with tarfile.open(path, "w") as tar:
        tar.add(BUSYBOX, "bin/busybox")
        for applet in ("sh", "echo", "cat", "pwd", "id"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        info = tarfile.TarInfo("srv")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)


def _inspect(d: daemons.Dockerd, ref: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(d.out("image", "inspect", ref))[0]
    return info


def _history(d: daemons.Dockerd, ref: str) -> list[dict[str, Any]]:
    out = d.out("history", "--no-trunc", "--format", "{{json .}}", ref)
    return [json.loads(line) for line in out.splitlines()]


def _run(d: daemons.Dockerd, ref: str) -> str:
    return d.run("run", "--rm", "--network", "none", ref).stdout.decode()


@pytest.fixture(scope="module")
def original() -> Iterator[Original]:
    reason = daemons.skip_reason_docker() or (None if BUSYBOX else "busybox not installed")
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="ai", dir="/tmp"))
    try:
        with daemons.dockerd(base / "d", "overlay2") as d:
            rootfs = base / "rootfs.tar"
            _busybox_rootfs(rootfs)
            d.run("import", "--change", 'CMD ["sh", "-c", "echo hi $FOO; pwd; cat /srv/f; id -u"]',
                  "--change", "ENV FOO=bar", "--change", "WORKDIR /srv", str(rootfs),
                  "interop:base")
            d.run("run", "--name", "c2", "--network", "none", "interop:base", "sh", "-c",
                  "echo layer two > /srv/f")
            d.run("commit", "--change", "LABEL org.example.test=yes", "--change", "USER 1000",
                  "--change", 'CMD ["sh", "-c", "echo hi $FOO; pwd; cat /srv/f; id -u"]', "c2", TAG)
            d.run("rm", "c2")
            saved = base / "saved.tar"
            d.run("save", "-o", str(saved), TAG)
            orig = Original(d, saved, _inspect(d, TAG), _history(d, TAG), _run(d, TAG))
            assert orig.output == EXPECTED_OUTPUT
            yield orig
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _load(d: daemons.Dockerd, archive: Path, ref: str) -> dict[str, Any]:
    """``docker load`` into a daemon that has no image at all: it skips a layer whose chain
    id it already has without reading its tar, so every layer of ``archive`` is extracted.
    The layer tars also hash to the config's diff ids (what ``docker load`` would not see
    either way). The caller loads ``Original.saved`` back when it needs it."""
    hashed, diff_ids = daemons.layer_diff_ids(archive.read_bytes())
    assert hashed == diff_ids
    for _ in range(5):  # children before parents: a parent with children cannot go
        for image in d.out("images", "-aq", "--no-trunc").split():
            d.run("rmi", "--force", image, check=False)
    assert not d.out("images", "-aq")
    d.run("load", "-i", str(archive))
    return _inspect(d, ref)


def _config(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info["Config"].get(k) for k in CONFIG_KEYS}


def test_docker_archive_round_trip(original: Original, cli: Aufs, tmp_path: Path) -> None:
    top = cli.ok("import", str(original.saved)).out.strip()
    names = {n for r in cli.ok("ls", "--json").json() for n in r["names"]}
    assert names == {TAG}  # every RepoTags entry
    out = tmp_path / "out.tar"
    cli.ok("export", top, "-o", str(out), "--format", "docker-archive")
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == [TAG]  # the full reference, from the name
    d = original.d
    try:
        loaded = _load(d, out, TAG)
        # Byte-exact layers and the config as it came: the very same image.
        assert loaded["RootFS"]["Layers"] == original.inspect["RootFS"]["Layers"]
        assert loaded["Id"] == original.inspect["Id"]
        assert _config(loaded) == _config(original.inspect)
        assert _config(loaded)["Labels"] == {"org.example.test": "yes"}
        assert [h["CreatedBy"] for h in _history(d, TAG)] == \
            [h["CreatedBy"] for h in original.history]
        assert _run(d, TAG) == original.output
    finally:  # the original back, for the other tests
        d.run("load", "-i", str(original.saved))


def test_local_layer_exports_with_base_config(original: Original, cli: Aufs,
                                              tmp_path: Path) -> None:
    top = cli.ok("import", str(original.saved)).out.strip()
    cli.ok("create", "local", "--parent", top)
    mnt = Path(cli.ok("mount", "local").out.strip())
    try:
        (mnt / "srv" / "f").write_text("changed here\n")
    finally:
        cli.ok("umount", "local")
    out = tmp_path / "local.tar"
    cli.ok("export", "local", "-o", str(out), "--format", "docker-archive",
           "--tag", "interop:local")
    d = original.d
    try:
        loaded = _load(d, out, "interop:local")
        assert _config(loaded) == _config(original.inspect)
        layers = loaded["RootFS"]["Layers"]
        assert layers[:-1] == original.inspect["RootFS"]["Layers"]  # the base: byte-exact
        history = _history(d, "interop:local")
        assert len(history) == len(original.history) + 1
        assert history[0]["CreatedBy"] == "aufs layer local"  # newest first
        assert _run(d, "interop:local") == EXPECTED_OUTPUT.replace("layer two", "changed here")
    finally:
        d.run("rmi", "--force", "interop:local", check=False)
        d.run("load", "-i", str(original.saved))


def test_a_changed_layer_exports_regenerated(original: Original, cli: Aufs,
                                             tmp_path: Path) -> None:
    """The imported top layer changed in place: its tar is generated anew (another diff
    id, the config's rootfs follows), the layer below stays byte-exact, docker runs it."""
    top = cli.ok("import", str(original.saved)).out.strip()
    mnt = Path(cli.ok("mount", top).out.strip())
    try:
        (mnt / "srv" / "f").write_text("LAYER TWO\n")  # the same size
    finally:
        cli.ok("umount", top)
    out = tmp_path / "changed.tar"
    cli.ok("export", top, "-o", str(out), "--format", "docker-archive",
           "--tag", "interop:changed", "--compress", "gzip")
    d = original.d
    try:
        loaded = _load(d, out, "interop:changed")
        was = original.inspect["RootFS"]["Layers"]
        assert loaded["RootFS"]["Layers"][:-1] == was[:-1]
        assert loaded["RootFS"]["Layers"][-1] != was[-1]
        assert _config(loaded) == _config(original.inspect)
        assert _run(d, "interop:changed") == EXPECTED_OUTPUT.replace("layer two", "LAYER TWO")
    finally:
        d.run("rmi", "--force", "interop:changed", check=False)
        d.run("load", "-i", str(original.saved))


def _podman(base: Path, *args: str) -> str:
    assert PODMAN is not None
    p = subprocess.run([PODMAN, "--root", str(base / "root"), "--runroot", str(base / "run"),
                        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                        "--events-backend", "none", *args],
                       capture_output=True, timeout=120, check=False)
    assert p.returncode == 0, f"podman {' '.join(args)}: {p.stderr.decode(errors='replace')}"
    return p.stdout.decode()


@pytest.mark.parametrize("fmt", ["oci", "docker-archive"])
def test_podman_loads_the_export(original: Original, cli: Aufs, tmp_path: Path,
                                 fmt: str) -> None:
    if PODMAN is None:
        pytest.skip("podman not installed")
    top = cli.ok("import", str(original.saved)).out.strip()
    out = tmp_path / "out.tar"
    cli.ok("export", top, "-o", str(out), "--format", fmt)
    base = Path(tempfile.mkdtemp(prefix="ap", dir="/tmp"))
    try:
        loaded = _podman(base, "load", "-i", str(out))
        assert f"Loaded image: localhost/{TAG}" in loaded, loaded  # the full name, as docker save's
        info = json.loads(_podman(base, "image", "inspect", TAG))[0]
        assert info["RootFS"]["Layers"] == original.inspect["RootFS"]["Layers"]
        assert {k: info["Config"].get(k) for k in CONFIG_KEYS if info["Config"].get(k)} == \
            {k: v for k, v in _config(original.inspect).items() if v}
    finally:
        subprocess.run(["umount", "-R", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
