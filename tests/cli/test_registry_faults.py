"""``aufs pull`` against a registry facade served by the test: the bearer-token flow, and
bad input (wrong digest, truncated blob, 401/404/500, a manifest that lies about sizes or
media types) -> one line, exit 1, no layer left, nothing left in staging. Transient
faults (500 once, a connection dropped mid-blob) are retried and the pull succeeds."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.kit import Aufs, Result, chain_ids, layer
from tests.cli.registry_facade import Facade, FakeImage, serve, sha
from tests.cli.test_progress import _on_tty

BASE = layer({"etc/hostname": b"base\n", "bin/sh": b"#!sh\n" * 1000})
APP = layer({"app/run": b"run\n" * 5000}, deletions=("etc/hostname",))
IMAGE = FakeImage([BASE, APP])
CHAINS = chain_ids([BASE, APP])


@pytest.fixture(scope="module")
def facade() -> Iterator[Facade]:
    with serve(IMAGE, users={"alice": "wonder"}) as f:
        yield f


@pytest.fixture
def docker_config(tmp_path: Path, facade: Facade) -> dict[str, str]:
    conf = tmp_path / "docker"
    conf.mkdir()
    auth = base64.b64encode(b"alice:wonder").decode()
    (conf / "config.json").write_text(json.dumps({"auths": {facade.address: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(conf)}


@pytest.fixture
def fresh(facade: Facade) -> Iterator[Facade]:
    facade.reset()
    yield facade
    facade.reset()


def _pull(cli: Aufs, f: Facade, env: dict[str, str], *extra: str) -> Result:
    return cli.run("pull", *extra, f"{f.address}/team/app:1", env=env)


def _nothing_left(cli: Aufs) -> None:
    assert cli.ok("ls", "--json").json() == []
    staging = cli.root / ".aufs" / "staging"
    assert not staging.exists() or os.listdir(staging) == []


def test_bearer_token_flow(cli: Aufs, fresh: Facade, docker_config: dict[str, str]) -> None:
    r = _pull(cli, fresh, docker_config)
    assert r.code == 0, r.err
    assert r.out.strip() == CHAINS[-1]
    assert r.err == ""  # no bars on a pipe
    q = fresh.token_queries[0]
    assert q["service"] == ["facade"]
    assert "repository:team/app:pull" in q["scope"]
    assert len(fresh.token_queries) == 1  # the token is reused for every later request
    row = next(x for x in cli.ok("ls", "--json").json() if x["id"] == CHAINS[-1])
    assert row["names"] == [f"{fresh.address}/team/app:1"]
    # again: nothing downloaded, nothing extracted
    fresh.log.clear()
    r = _pull(cli, fresh, docker_config, "--json")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.out.splitlines()]
    assert [e["status"] for e in events if e["event"] == "layer"] == ["exists", "exists"]
    assert events[-1]["event"] == "pulled" and events[-1]["id"] == CHAINS[-1]
    assert not [x for x in fresh.log if "/blobs/" in x and "GET" in x and
                sha(IMAGE.manifest) not in x and IMAGE.manifest_doc["config"]["digest"] not in x]


def test_token_refused(cli: Aufs, fresh: Facade, tmp_path: Path) -> None:
    conf = tmp_path / "bad"
    conf.mkdir()
    (conf / "config.json").write_text(json.dumps({"auths": {fresh.address: {
        "auth": base64.b64encode(b"alice:wrong").decode()}}}))
    line = _fails(cli, fresh, {"DOCKER_CONFIG": str(conf)})
    assert "refused a token (401)" in line and "credentials" in line


def test_no_credentials(cli: Aufs, fresh: Facade, tmp_path: Path) -> None:
    line = _fails(cli, fresh, {"DOCKER_CONFIG": str(tmp_path / "none")})
    assert "refused a token (401)" in line


def _fails(cli: Aufs, f: Facade, env: dict[str, str]) -> str:
    r = _pull(cli, f, env)
    assert r.code == 1, (r.code, r.err)
    assert "Traceback" not in r.err
    assert len(r.err_lines) == 1, r.err
    _nothing_left(cli)
    return r.err_lines[0]


APP_BLOB = IMAGE.layer_digests[1]
BASE_BLOB = IMAGE.layer_digests[0]


def _lying(**layer_over: Any) -> bytes:
    doc = json.loads(IMAGE.manifest)
    doc["layers"][1].update(layer_over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("faults", "expect"), [
    ({"corrupt": [APP_BLOB]}, f"blob {APP_BLOB}: digest mismatch"),
    ({"truncate": [APP_BLOB]}, f"blob {APP_BLOB}: truncated"),
    ({"manifest_404": True}, "manifest 1: not found (MANIFEST_UNKNOWN: manifest unknown)"),
    ({"status": ("/blobs/", 500, 99)}, "500 Internal Server Error (gave up after 4 attempts)"),
    ({"status": ("/manifests/", 503, 99)}, "503 Service Unavailable (gave up after 4"),
    ({"status": ("/blobs/", 404, 99)}, "not found"),
    ({"manifest_body": _lying(size=10)}, "longer than the 10 bytes the manifest says"),
    ({"manifest_body": _lying(size=len(IMAGE.blobs[APP_BLOB]) + 100)}, "truncated"),
    ({"manifest_body": _lying(mediaType="application/vnd.oci.image.layer.v1.tar+zstd")},
     "says zstd, the blob is gzip"),
    ({"manifest_body": _lying(mediaType="application/vnd.oci.image.layer.v1.tar")},
     "says an uncompressed tar, the blob is gzip"),
    ({"manifest_body": _lying(mediaType="application/octet-stream")}, "is not a layer tar"),
    ({"manifest_type": "application/vnd.docker.distribution.manifest.v2+json"},
     "served as application/vnd.docker.distribution.manifest.v2+json but says it is "
     "application/vnd.oci.image.manifest.v1+json"),
    ({"manifest_body": b"{not json"}, "not valid JSON"),
])
def test_bad_input(cli: Aufs, fresh: Facade, docker_config: dict[str, str],
                   faults: dict[str, Any], expect: str) -> None:
    fresh.faults.update(faults)
    line = _fails(cli, fresh, docker_config)
    assert expect in line, line


def test_a_good_layer_is_removed_when_a_later_one_fails(
        cli: Aufs, fresh: Facade, docker_config: dict[str, str]) -> None:
    fresh.faults["corrupt"] = [APP_BLOB]
    r = _pull(cli, fresh, docker_config, "--json")
    assert r.code == 1
    _nothing_left(cli)


@pytest.mark.parametrize("faults", [
    {"status": ("/blobs/", 500, 2)},          # two 500s, then the blob
    {"status": ("/manifests/", 502, 1)},
    {"reset": [BASE_BLOB]},                   # half the blob, then the connection drops
])
def test_transient_faults_are_retried(cli: Aufs, fresh: Facade, docker_config: dict[str, str],
                                      faults: dict[str, Any]) -> None:
    fresh.faults.update(faults)
    r = _pull(cli, fresh, docker_config)
    assert r.code == 0, r.err
    assert r.out.strip() == CHAINS[-1]


def test_bars_on_a_terminal(cli: Aufs, fresh: Facade, docker_config: dict[str, str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in docker_config.items():
        monkeypatch.setenv(key, value)
    code, drawn = _on_tty(cli, "pull", f"{fresh.address}/team/app:1")
    assert code == 0, drawn
    for digest in IMAGE.layer_digests:  # a bar per layer download
        assert f"{digest[7:19]} download" in drawn, drawn
    assert "extract" in drawn
