"""Pure parts of the registry client: references, challenges, credentials, manifests,
platforms (table tests, no network)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from aufs.image import oci
from aufs.registry import InvalidReferenceError, RegistryError, manifest
from aufs.registry.auth import parse_challenge
from aufs.registry.credentials import Credentials, lookup
from aufs.registry.reference import Reference, is_loopback, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "want", "familiar"), [
    ("busybox", Reference("docker.io", "library/busybox", "latest", None), "busybox:latest"),
    ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36", None),
     "busybox:1.36"),
    ("team/app", Reference("docker.io", "team/app", "latest", None), "team/app:latest"),
    ("docker.io/library/debian:12", Reference("docker.io", "library/debian", "12", None),
     "debian:12"),
    ("index.docker.io/x/y", Reference("docker.io", "x/y", "latest", None), "x/y:latest"),
    ("localhost/app", Reference("localhost", "app", "latest", None), "localhost/app:latest"),
    ("localhost:5000/a/b:v1", Reference("localhost:5000", "a/b", "v1", None),
     "localhost:5000/a/b:v1"),
    ("127.0.0.1:5000/app:1", Reference("127.0.0.1:5000", "app", "1", None),
     "127.0.0.1:5000/app:1"),
    ("[::1]:5000/app", Reference("[::1]:5000", "app", "latest", None), "[::1]:5000/app:latest"),
    ("reg.example.com/a/b/c", Reference("reg.example.com", "a/b/c", "latest", None),
     "reg.example.com/a/b/c:latest"),
    (f"app@{D}", Reference("docker.io", "library/app", None, D), f"app@{D}"),
    (f"h.io/app:t@{D}", Reference("h.io", "app", "t", D), f"h.io/app:t@{D}"),
    ("a__b/c-d.e_f:Tag_1.0-x", Reference("docker.io", "a__b/c-d.e_f", "Tag_1.0-x", None),
     "a__b/c-d.e_f:Tag_1.0-x"),
])
def test_parse(text: str, want: Reference, familiar: str) -> None:
    ref = parse(text)
    assert ref == want
    assert ref.familiar() == familiar
    assert parse(str(ref)) == ref


@pytest.mark.parametrize("text", [
    "", "app/Case", "app:", "app:-x", "app@sha256:abc", "a//b", "/app", "app/",
    "host:port:5000/x", "a b", "app:" + "t" * 129, "-app", "app@md5:" + "0" * 32,
])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse(text)


@pytest.mark.parametrize(("text", "api", "hostname", "obj"), [
    ("busybox", "registry-1.docker.io", "docker.io", "latest"),
    ("localhost:5000/a", "localhost:5000", "localhost", "latest"),
    ("[::1]:5000/a:2", "[::1]:5000", "::1", "2"),
    (f"h.io/a:2@{D}", "h.io", "h.io", D),
])
def test_hosts(text: str, api: str, hostname: str, obj: str) -> None:
    ref = parse(text)
    assert (ref.api_host, ref.hostname, ref.object) == (api, hostname, obj)


@pytest.mark.parametrize(("host", "loop"), [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("a.localhost", True), ("10.0.0.1", False), ("example.com", False), ("::2", False),
    ("localhostx", False),
])
def test_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


@pytest.mark.parametrize(("header", "want"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull"',
     ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                 "scope": "repository:library/busybox:pull"})),
    ('Basic realm="test"', ("basic", {"realm": "test"})),
    ('Bearer realm="r", scope="repository:a:pull,push"',
     ("bearer", {"realm": "r", "scope": "repository:a:pull,push"})),
    ("Bearer realm=r,service=s", ("bearer", {"realm": "r", "service": "s"})),
    ("", None),
])
def test_challenge(header: str, want: object) -> None:
    assert parse_challenge(header) == want


def _config(tmp_path: Path, auths: object) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return str(path)


def test_credentials(tmp_path: Path) -> None:
    b64 = base64.b64encode(b"alice:s3:cret").decode()
    path = _config(tmp_path, {
        "https://index.docker.io/v1/": {"auth": b64},
        "localhost:5000": {"username": "bob", "password": "pw"},
        "http://reg.example.com/v2/": {"auth": b64, "identitytoken": "refresh"},
        "tok.example.com": {"registrytoken": "abc"},
    })
    assert lookup("docker.io", path) == Credentials("alice", "s3:cret")
    assert lookup("localhost:5000", path) == Credentials("bob", "pw")
    assert lookup("reg.example.com", path) == Credentials("alice", "s3:cret", "refresh")
    assert lookup("tok.example.com", path) == Credentials(registry_token="abc")
    assert lookup("localhost:5001", path) is None
    assert lookup("x", str(tmp_path / "missing.json")) is None


def test_credentials_from_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    _config(tmp_path, {"h:1": {"auth": base64.b64encode(b"u:p").decode()}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert lookup("h:1") == Credentials("u", "p")


@pytest.mark.parametrize("entry", [{"auth": "!!!"}, {"auth": base64.b64encode(b"nocolon")
                                                     .decode()}])
def test_credentials_damaged(tmp_path: Path, entry: dict[str, str]) -> None:
    with pytest.raises(RegistryError, match="base64"):
        lookup("h", _config(tmp_path, {"h": entry}))


def _manifest(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": manifest.CONFIG_TYPES[0], "digest": D, "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": D, "size": 5}]}
    doc.update(over)
    return doc


def test_manifest_parses() -> None:
    m = manifest.parse(json.dumps(_manifest()).encode(), oci.OCI_MANIFEST, "m")
    assert isinstance(m, manifest.Manifest)
    assert m.config.size == 10 and m.layers[0].digest == D
    idx = manifest.parse(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": D, "size": 3,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode(),
        oci.OCI_INDEX, "i")
    assert isinstance(idx, manifest.Index) and idx.manifests[0].platform is not None


@pytest.mark.parametrize(("doc", "served", "message"), [
    (_manifest(), oci.DOCKER_MANIFEST, "served as"),
    (_manifest(mediaType=oci.OCI_INDEX), oci.OCI_MANIFEST, "served as"),
    (_manifest(schemaVersion=1), oci.OCI_MANIFEST, "schema 1"),
    (_manifest(layers=[{"mediaType": "text/plain", "digest": D, "size": 1}]),
     oci.OCI_MANIFEST, "not a layer tar"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": D, "size": -1}]), oci.OCI_MANIFEST, "size"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": "sha256:xyz", "size": 1}]), oci.OCI_MANIFEST, "digest"),
    (_manifest(config={"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D,
                       "size": 1}), oci.OCI_MANIFEST, "not an image config"),
    (_manifest(layers="x"), oci.OCI_MANIFEST, "no layers"),
    ([], oci.OCI_MANIFEST, "not a JSON object"),
])
def test_manifest_refused(doc: object, served: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        manifest.parse(json.dumps(doc).encode(), served, "m")


@pytest.mark.parametrize(("media_type", "head", "ok"), [
    ("application/vnd.oci.image.layer.v1.tar+gzip", b"\x1f\x8b\x08\x00", True),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", b"\x1f\x8b\x08\x00", True),
    ("application/vnd.oci.image.layer.v1.tar+zstd", b"\x28\xb5\x2f\xfd", True),
    ("application/vnd.oci.image.layer.v1.tar", b"etc/", True),
    ("application/vnd.oci.image.layer.v1.tar+gzip", b"etc/", False),
    ("application/vnd.oci.image.layer.v1.tar+gzip", b"\x28\xb5\x2f\xfd", False),
    ("application/vnd.oci.image.layer.v1.tar", b"\x1f\x8b\x08\x00", False),
])
def test_compression_matches_media_type(media_type: str, head: bytes, ok: bool) -> None:
    if ok:
        manifest.check_compression(media_type, head, "b")
    else:
        with pytest.raises(RegistryError, match="media type"):
            manifest.check_compression(media_type, head, "b")


@pytest.mark.parametrize(("text", "want"), [
    ("linux/amd64", manifest.Platform("linux", "amd64")),
    ("linux/arm64/v8", manifest.Platform("linux", "arm64", "v8")),
    ("arm64", manifest.Platform("linux", "arm64")),
    ("linux/x86_64", manifest.Platform("linux", "amd64")),
    ("Linux/ARM/v7", manifest.Platform("linux", "arm", "v7")),
])
def test_parse_platform(text: str, want: manifest.Platform) -> None:
    assert manifest.parse_platform(text) == want


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "/amd64"])
def test_parse_platform_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        manifest.parse_platform(text)


def _entry(digest_char: str, **platform: str) -> dict[str, object]:
    return {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + digest_char * 64,
            "size": 1, "platform": platform}


INDEX = manifest.Index(oci.OCI_INDEX, tuple(
    manifest._descriptor(e, "i") for e in [
        _entry("1", os="linux", architecture="amd64"),
        _entry("2", os="linux", architecture="arm", variant="v6"),
        _entry("3", os="linux", architecture="arm", variant="v7"),
        _entry("4", os="linux", architecture="arm64"),
        _entry("5", os="windows", architecture="amd64"),
        _entry("6", os="unknown", architecture="unknown"),
    ]))


@pytest.mark.parametrize(("want", "char"), [
    (manifest.Platform("linux", "amd64"), "1"),
    (manifest.Platform("linux", "arm", "v7"), "3"),
    (manifest.Platform("linux", "arm", "v6"), "2"),
    (manifest.Platform("linux", "arm"), "2"),
    (manifest.Platform("linux", "arm64", "v8"), "4"),
    (manifest.Platform("windows", "amd64"), "5"),
])
def test_choose_platform(want: manifest.Platform, char: str) -> None:
    assert manifest.choose(INDEX, want, "i").digest == "sha256:" + char * 64


def test_choose_platform_missing() -> None:
    with pytest.raises(RegistryError, match=r"no image for linux/s390x \(the index has: "):
        manifest.choose(INDEX, manifest.Platform("linux", "s390x"), "i")
