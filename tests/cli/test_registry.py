"""``aufs pull`` / ``aufs push`` with real parts: Debian's docker-registry (open, and with
htpasswd basic auth), skopeo as the other side, and a private dockerd that runs what was
pushed."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from aufs.registry.client import Repository
from aufs.registry.reference import parse
from tests import daemons
from tests.cli.kit import Aufs, layer

SKOPEO = shutil.which("skopeo")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

pytestmark = pytest.mark.skipif(
    daemons.skip_reason_registry() is not None or SKOPEO is None
    or not os.path.exists(BUSYBOX),
    reason=daemons.skip_reason_registry() or "skopeo or busybox not installed")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _files(layers: list[dict[str, bytes]], deletions: list[tuple[str, ...]]) -> list[bytes]:
    return [layer(f, d) for f, d in zip(layers, deletions, strict=True)]


def _busybox_layer() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("bin")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        data = Path(BUSYBOX).read_bytes()
        f = tarfile.TarInfo("bin/busybox")
        f.mode, f.size = 0o755, len(data)
        tar.addfile(f, io.BytesIO(data))
    return buf.getvalue()


def _oci_image(out: Path, tars: list[bytes], compress: list[str], *,
               arch: str = "amd64", cmd: list[str] | None = None) -> dict[str, Any]:
    """Write (or add to) an OCI layout at ``out``; return its manifest descriptor."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = _sha(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    descs = []
    for tar, how in zip(tars, compress, strict=True):
        if how == "gzip":
            data, kind = gzip.compress(tar, mtime=0), "tar+gzip"
        elif how == "zstd":
            data, kind = zstandard.ZstdCompressor().compress(tar), "tar+zstd"
        else:
            data, kind = tar, "tar"
        descs.append({"mediaType": f"application/vnd.oci.image.layer.v1.{kind}",
                      "digest": put(data), "size": len(data)})
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Cmd": cmd} if cmd else {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [_sha(t) for t in tars]}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": descs}).encode()
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest), "size": len(manifest),
            "platform": {"os": "linux", "architecture": arch}}
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return desc


def _index(out: Path, descs: list[dict[str, Any]], tag: str) -> None:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{**d, "annotations": {"org.opencontainers.image.ref.name": tag}}
                           for d in descs] if len(descs) == 1 else descs}
    if len(descs) > 1:  # a multi-platform image: a nested index named by the tag
        nested = json.dumps(index).encode()
        digest = _sha(nested)
        (out / "blobs" / "sha256" / digest[7:]).write_bytes(nested)
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
            "size": len(nested), "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (out / "index.json").write_text(json.dumps(index))


def _skopeo(*args: str, env: dict[str, str] | None = None) -> str:
    assert SKOPEO is not None
    p = subprocess.run([SKOPEO, *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})}, check=False)
    assert p.returncode == 0, f"skopeo {' '.join(args)}: {p.stderr}"
    return p.stdout


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="arg", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def reg(base_dir: Path) -> Iterator[daemons.Registry]:
    with daemons.registry(base_dir / "open") as r:
        yield r


BASE = {"etc/hostname": b"base\n", "etc/motd": b"hi\n", "usr/share/doc/a": b"a" * 70000}
MID = {"etc/hostname": b"mid\n", "srv/data.bin": os.urandom(300000)}
TOP = {"app/msg": b"hello from aufs\n"}


@pytest.fixture(scope="module")
def source(base_dir: Path, reg: daemons.Registry) -> dict[str, Any]:
    """A 4-layer image (busybox, gzip; base, zstd; mid, uncompressed; top, gzip, with a
    whiteout) pushed by skopeo as team/app:1."""
    tars = [_busybox_layer(), layer(BASE), layer(MID), layer(TOP, ("etc/motd",))]
    out = base_dir / "src-oci"
    desc = _oci_image(out, tars, ["gzip", "zstd", "none", "gzip"],
                      cmd=["/bin/busybox", "cat", "/app/msg"])
    _index(out, [desc], "1")
    _skopeo("copy", "--dest-tls-verify=false", f"oci:{out}:1",
            f"docker://{reg.address}/team/app:1")
    pushed = json.loads(_skopeo("inspect", "--tls-verify=false",
                                f"docker://{reg.address}/team/app:1"))
    expected: dict[str, bytes | None] = {"bin": None, "bin/busybox": Path(BUSYBOX).read_bytes()}
    for files in (BASE, MID, TOP):
        for name, data in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                expected["/".join(parts[:i])] = None
            expected[name] = data
    del expected["etc/motd"]
    return {"layout": out, "tars": tars, "expected": expected, "digest": pushed["Digest"]}


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_pull_gives_the_source_tree(cli: Aufs, reg: daemons.Registry,
                                    source: dict[str, Any]) -> None:
    ref = f"{reg.address}/team/app:1"
    top = cli.ok("pull", ref).out.strip()
    assert len(top) == 64
    rows = {r["id"]: r for r in cli.ok("ls", "--json").json()}
    assert len(rows) == 4 and rows[top]["names"] == [ref]
    assert ref in cli.ok("ls").out
    mnt = Path(cli.ok("mount", top).out.strip())
    try:
        assert _tree(mnt) == source["expected"]
    finally:
        cli.ok("umount", top)
    # Again: every layer is there, nothing is downloaded or extracted.
    events = _events(cli.ok("pull", "--json", ref).out)
    assert [e["status"] for e in events if e["event"] == "layer"] == ["exists"] * 4
    assert events[-1] == {"event": "pulled", "id": top, "digest": source["digest"],
                          "reference": ref}
    # By digest: the same layers, one more name.
    by_digest = f"{reg.address}/team/app@{source['digest']}"
    assert cli.ok("pull", by_digest).out.strip() == top
    assert by_digest in {n for r in cli.ok("ls", "--json").json() for n in r["names"]}
    staging = cli.root / ".aufs" / "staging"
    assert not staging.exists() or os.listdir(staging) == []


def test_pull_downloads_only_missing_layers(cli: Aufs, reg: daemons.Registry,
                                            source: dict[str, Any], base_dir: Path) -> None:
    cli.ok("pull", f"{reg.address}/team/app:1")
    out = base_dir / "child-oci"
    tars = [*source["tars"], layer({"extra": b"x\n"})]
    desc = _oci_image(out, tars, ["gzip", "zstd", "none", "gzip", "gzip"])
    _index(out, [desc], "2")
    _skopeo("copy", "--dest-tls-verify=false", f"oci:{out}:2",
            f"docker://{reg.address}/team/child:2")
    events = _events(cli.ok("pull", "--json", f"{reg.address}/team/child:2").out)
    status = [e["status"] for e in events if e["event"] == "layer"]
    assert status.count("exists") == 4 and status.count("downloading") == 1


def test_platform_choice(cli: Aufs, reg: daemons.Registry, base_dir: Path) -> None:
    out = base_dir / "multi-oci"
    amd = _oci_image(out, [layer({"arch": b"amd64\n"})], ["gzip"], arch="amd64")
    arm = _oci_image(out, [layer({"arch": b"arm64\n"})], ["gzip"], arch="arm64")
    _index(out, [amd, arm], "m")
    _skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{out}:m",
            f"docker://{reg.address}/multi:m")
    for platform, want in (("linux/arm64", b"arm64\n"), ("linux/amd64", b"amd64\n")):
        top = cli.ok("pull", "--platform", platform, f"{reg.address}/multi:m").out.strip()
        assert (cli.root / "diff" / top / "arch").read_bytes() == want
    line = cli.fails(1, "pull", "--platform", "linux/s390x", f"{reg.address}/multi:m")
    assert "no image for linux/s390x" in line


def test_push_read_by_skopeo_and_run_by_docker(cli: Aufs, reg: daemons.Registry,
                                               source: dict[str, Any], base_dir: Path) -> None:
    top = cli.ok("pull", f"{reg.address}/team/app:1").out.strip()
    ref = f"{reg.address}/pushed/app:v1"
    events = _events(cli.ok("push", "--json", top, ref).out)
    # Byte-exact layers: what was pulled is mounted from its source repository again.
    uploaded = [e["digest"] for e in events
                if e.get("status") in ("uploaded", "mounted", "exists")]
    assert len(uploaded) == 4
    pushed = events[-1]
    assert pushed["event"] == "pushed"
    raw = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert sorted(d["digest"] for d in raw["layers"]) == sorted(uploaded)
    inspect = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert inspect["Digest"] == pushed["digest"]
    assert inspect["Layers"] == [d["digest"] for d in raw["layers"]]
    config = json.loads(_skopeo("inspect", "--config", "--raw", "--tls-verify=false",
                                f"docker://{ref}"))
    assert config["rootfs"]["diff_ids"] == [_sha(t) for t in source["tars"]]  # byte-exact
    assert config["config"]["Cmd"] == ["/bin/busybox", "cat", "/app/msg"]
    # The same tree comes back through another store.
    other = Aufs(base_dir / "other-store")
    try:
        again = other.ok("pull", ref).out.strip()
        assert _tree(Path(other.ok("mount", again).out.strip())) == source["expected"]
        other.ok("umount", again)
    finally:
        other.run("cleanup")
    _docker_runs_it(reg, ref, source, base_dir)


def _docker_runs_it(reg: daemons.Registry, ref: str, source: dict[str, Any],
                    base_dir: Path) -> None:
    if daemons.skip_reason_docker() is not None:
        pytest.skip(daemons.skip_reason_docker() or "")
    with daemons.dockerd(base_dir / "dk", "overlay2") as d:
        to = ["--dest-daemon-host", d.host]
        # Docker images have no zstd layers: the original, all gzip (same diff ids)
        orig = base_dir / "orig-gzip"
        _index(orig, [_oci_image(orig, source["tars"], ["gzip"] * 4,
                                 cmd=["/bin/busybox", "cat", "/app/msg"])], "1")
        _skopeo("copy", *to, f"oci:{orig}:1", "docker-daemon:orig:1")
        # The push mounted the source's blobs, zstd ones too, which Docker 20.10 cannot
        # take: recompressed to gzip on the way (as for the original)
        regz = base_dir / "pushed-gzip"
        _skopeo("copy", "--src-tls-verify=false", "--dest-compress-format", "gzip",
                f"docker://{ref}", f"oci:{regz}:1")
        _skopeo("copy", *to, f"oci:{regz}:1", "docker-daemon:pushed:1")
        argv = ["run", "--rm", "--network", "none"]
        cmd = ["/bin/busybox", "sh", "-c",
               "cd /; b=/bin/busybox; $b cat app/msg; $b ls etc srv usr/share/doc; "
               "$b md5sum srv/data.bin usr/share/doc/a"]
        want = d.out(*argv, "orig:1", *cmd)
        assert want.startswith("hello from aufs")
        assert d.out(*argv, "pushed:1", *cmd) == want
        # the config came along: the image's own command
        assert d.out(*argv, "pushed:1") == d.out(*argv, "orig:1") == "hello from aufs"


def test_push_skips_and_mounts(cli: Aufs, reg: daemons.Registry) -> None:
    cli.ok("apply", "base", "-", stdin=layer({"f": b"1" * 5000}))
    cli.ok("apply", "top", "-", "--parent", "base", stdin=layer({"g": b"2" * 5000}))
    first = _events(cli.ok("push", "--json", "top", f"{reg.address}/mnt/a:1").out)
    assert [e["status"] for e in first if e["event"] == "layer"].count("uploaded") == 2
    again = _events(cli.ok("push", "--json", "top", f"{reg.address}/mnt/a:2").out)
    assert [e["status"] for e in again if e["event"] == "layer"] == ["exists", "exists"]
    other = _events(cli.ok("push", "--json", "top", f"{reg.address}/mnt/b:1").out)
    mounted = [e for e in other if e.get("status") == "mounted"]
    assert len(mounted) == 2 and all(e["source"] == f"{reg.address}/mnt/a" for e in mounted)
    assert first[-1]["digest"] == other[-1]["digest"]


def test_chunked_upload(reg: daemons.Registry, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = _sha(data)
    with Repository(parse(f"{reg.address}/chunks/x"), push=True) as repo:
        assert not repo.has_blob(digest)
        seen: list[int] = []
        repo.upload(str(path), digest, len(data), seen.append, chunk=64 * 1024)
        assert repo.has_blob(digest) and sum(seen) == len(data)
        back = tmp_path / "back"
        repo.fetch_blob(digest, len(data), str(back))
    assert back.read_bytes() == data


def test_push_then_pull_errors(cli: Aufs, reg: daemons.Registry) -> None:
    assert "not found" in cli.fails(1, "pull", f"{reg.address}/nothing/here:1")
    assert "invalid reference" in cli.fails(1, "pull", "Bad//ref")
    assert "invalid platform" in cli.fails(1, "pull", "--platform", "a/b/c/d",
                                           f"{reg.address}/x:1")
    # A registry that is not there: retried, then one line.
    port = daemons.free_port()
    assert "gave up after" in cli.fails(1, "pull", f"127.0.0.1:{port}/x:1")


@pytest.fixture(scope="module")
def auth_reg(base_dir: Path) -> Iterator[daemons.Registry]:
    bcrypt = pytest.importorskip("bcrypt")
    htpasswd = base_dir / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    with daemons.registry(base_dir / "auth", htpasswd=htpasswd) as r:
        yield r


def test_basic_auth(cli: Aufs, auth_reg: daemons.Registry, tmp_path: Path) -> None:
    cli.ok("apply", "base", "-", stdin=layer({"secret": b"x\n"}))
    ref = f"{auth_reg.address}/private/app:1"
    r = cli.run("push", "base", ref, env={"DOCKER_CONFIG": str(tmp_path / "none")})
    assert r.code == 1 and len(r.err_lines) == 1 and "unauthorized" in r.err, r.err
    conf = tmp_path / "docker"
    conf.mkdir()
    auth = base64.b64encode(b"alice:s3cret").decode()
    (conf / "config.json").write_text(json.dumps({"auths": {auth_reg.address: {"auth": auth}}}))
    env = {"DOCKER_CONFIG": str(conf)}
    assert cli.run("push", "base", ref, env=env).code == 0
    other = Aufs(tmp_path / "other")
    try:
        r = other.run("pull", ref, env=env)
        assert r.code == 0, r.err
        assert (other.root / "diff" / r.out.strip() / "secret").read_bytes() == b"x\n"
        wrong = tmp_path / "wrong"
        wrong.mkdir()
        (wrong / "config.json").write_text(json.dumps({"auths": {auth_reg.address: {
            "auth": base64.b64encode(b"alice:nope").decode()}}}))
        r = other.run("pull", ref, env={"DOCKER_CONFIG": str(wrong)})
        assert r.code == 1 and "unauthorized" in r.err and len(r.err_lines) == 1, r.err
    finally:
        other.run("cleanup")
