"""The plugin's protocol, call by call, against a real store through its real unix socket.

The plugin runs as ``python -m aufs docker-plugin`` (a subprocess); the calls are made
with ``http.client`` over AF_UNIX, as dockerd's Go client makes them: POST, JSON bodies,
``ApplyDiff`` chunked with ``?id=&parent=``, ``Diff`` read as a stream.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.kit import Aufs, layer
from tests.docker import kit
from tests.leaks import mounts_below

pytestmark = [pytest.mark.root]
if os.geteuid() != 0:
    pytestmark.append(pytest.mark.skip(reason="needs root"))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[kit.Plugin, Path]]:
    """One plugin on one store (``--root``) for the table below."""
    base = Path(tempfile.mkdtemp(prefix="ap", dir="/tmp"))
    root = base / "store"
    try:
        with kit.plugin(kit.unique_name(), base / "plugin.log", "--root", str(root)) as p:
            yield p, root
        assert not mounts_below(base)
    finally:
        done = Aufs(root).run("cleanup")
        shutil.rmtree(base, ignore_errors=True)
    assert done.code == 0, done.err


def post(p: kit.Plugin, method: str, body: Any = None, query: str = "") -> tuple[int, Any]:
    status, raw = kit.call(p.sock, method, body, query)
    return status, json.loads(raw)


def apply(p: kit.Plugin, id: str, parent: str, data: bytes, chunk: int = 7000) -> tuple[int, Any]:
    """ApplyDiff with a chunked body, as dockerd sends it."""
    conn = kit.UnixHTTPConnection(p.sock)
    try:
        conn.request("POST", f"/GraphDriver.ApplyDiff?id={id}&parent={parent}",
                     body=(data[i:i + chunk] for i in range(0, len(data), chunk)),
                     encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


BASE_TAR = layer({"etc/motd": b"hello\n", "bin/tool": b"#!/bin/sh\n"})
UPPER_TAR = layer({"etc/new": b"new\n"}, deletions=("etc/motd",))

# (method, body, status, what the answer must contain); run in order on one store.
TABLE: list[tuple[str, Any, int, dict[str, Any]]] = [
    ("Plugin.Activate", None, 200, {"Implements": ["GraphDriver"]}),
    ("GraphDriver.Capabilities", {}, 200, {"Capabilities": {"ReproducesExactDiffs": False}}),
    ("GraphDriver.Init", {"Home": "/nonexistent/home", "Opts": [], "UIDMaps": None,
                          "GIDMaps": None}, 200, {}),
    ("GraphDriver.Init", {"Opts": []}, 400, {"Err": "Home is missing"}),
    ("GraphDriver.Init", {"Home": "/x", "UIDMaps": [{"ContainerID": 0, "HostID": 1000,
                                                     "Size": 1}]}, 200,
     {"Err": "does not support user namespace remapping (--userns-remap)"}),
    ("GraphDriver.Init", {"Home": "/x", "Opts": ["size=1G"]}, 200,
     {"Err": "unknown option 'size' for the aufs driver (known: aufs.engine)"}),
    ("GraphDriver.Create", {"ID": "base", "Parent": "", "MountLabel": ""}, 200, {}),
    ("GraphDriver.Create", {"ID": "base"}, 200, {"Err": "layer already exists: base"}),
    ("GraphDriver.Create", {"ID": "x", "Parent": "nope"}, 200, {"Err": "no such layer: nope"}),
    ("GraphDriver.Create", {"ID": "a/b"}, 200, {"Err": "invalid layer id: 'a/b'"}),
    ("GraphDriver.Create", {"ID": "x", "StorageOpt": {"size": "1G"}}, 200,
     {"Err": "--storage-opt is not supported for "}),
    ("GraphDriver.Create", {"ID": 7}, 400, {"Err": "ID must be a string, not int"}),
    ("GraphDriver.Exists", {"ID": "base"}, 200, {"Exists": True}),
    ("GraphDriver.Exists", {"ID": "nope"}, 200, {"Exists": False}),
    ("GraphDriver.Exists", {"ID": "../etc"}, 200, {"Exists": False}),
    ("APPLY base", BASE_TAR, 200, {"Size": 16}),
    ("GraphDriver.CreateReadWrite", {"ID": "top", "Parent": "base"}, 200, {}),
    ("APPLY top", UPPER_TAR, 200, {"Size": 4}),
    ("GraphDriver.Changes", {"ID": "top", "Parent": "base"}, 200,
     {"Changes": [{"Path": "/etc", "Kind": 0}, {"Path": "/etc/motd", "Kind": 2},
                  {"Path": "/etc/new", "Kind": 1}]}),
    ("GraphDriver.DiffSize", {"ID": "top", "Parent": "base"}, 200, {"Size": 4}),
    ("GraphDriver.DiffSize", {"ID": "nope"}, 200, {"Err": "no such layer: nope"}),
    ("GraphDriver.Get", {"ID": "nope"}, 200, {"Err": "no such layer: nope"}),
    ("GraphDriver.Remove", {"ID": "base"}, 200, {"Err": "layer base is the parent of: top"}),
    ("GraphDriver.Remove", {"ID": "nope"}, 200, {"Err": "no such layer: nope"}),
    ("GraphDriver.Put", {"ID": "nope"}, 200, {"Err": "no such layer: nope"}),
    ("GraphDriver.Frobnicate", {}, 404, {"Err": "unknown method GraphDriver.Frobnicate"}),
    ("GraphDriver.Exists", b"{not json", 400, {"Err": "the request body is not JSON"}),
    ("GraphDriver.Exists", b"[1]", 400, {"Err": "the request body is not a JSON object"}),
    ("GraphDriver.Diff", {"ID": "nope"}, 500, {"Err": "no such layer: nope"}),
    ("APPLY ", BASE_TAR, 400, {"Err": "the id query parameter is missing"}),
    ("APPLY nope", BASE_TAR, 200, {"Err": "no such layer: nope"}),
    ("APPLY top", b"this is not a tar" * 100, 200, {"Err": "not a tar"}),
]


def _matches(got: Any, want: dict[str, Any]) -> bool:
    if not want:
        return bool(got == {})
    for key, value in want.items():
        if key == "Err":
            if value not in got.get("Err", ""):
                return False
        elif got.get(key) != value:
            return False
    return True


def test_call_table_in_order(served: tuple[kit.Plugin, Path]) -> None:
    """The rows build on each other (Create, then ApplyDiff, then Changes…): one test runs
    them in order, so no row can be selected alone against a store it did not set up."""
    p, _ = served
    for i, (method, body, status, want) in enumerate(TABLE):
        if method.startswith("APPLY"):
            got = apply(p, method.split(" ", 1)[1], "", body)
        else:
            got = post(p, method, body)
        assert got[0] == status and _matches(got[1], want), (i, method, got)


def test_get_status_metadata_diff_put_remove(served: tuple[kit.Plugin, Path]) -> None:
    p, root = served
    real = os.path.realpath(root)
    assert post(p, "GraphDriver.Create", {"ID": "g1"}) == (200, {})
    assert apply(p, "g1", "", BASE_TAR)[0] == 200
    assert post(p, "GraphDriver.CreateReadWrite", {"ID": "g2", "Parent": "g1"}) == (200, {})
    status, got = post(p, "GraphDriver.Get", {"ID": "g2", "MountLabel": ""})
    assert (status, got) == (200, {"Dir": f"{real}/mnt/g2"})
    Path(got["Dir"], "written").write_bytes(b"by a container\n")
    assert Path(got["Dir"], "etc/motd").read_bytes() == b"hello\n"

    status, rows = post(p, "GraphDriver.Status")
    assert rows["Status"][0] == ["Root Dir", real]
    assert [k for k, _ in rows["Status"][:4]] == ["Root Dir", "Backing Filesystem", "Dirs",
                                                 "Dirperm1 Supported"]
    assert post(p, "GraphDriver.GetMetadata", {"ID": "g2"}) == (200, {"Metadata": {
        "UpperDir": f"{real}/diff/g2", "LowerDir": f"{real}/diff/g1",
        "MergedDir": f"{real}/mnt/g2"}})

    status, raw = kit.call(p.sock, "GraphDriver.Diff", {"ID": "g2", "Parent": "g1"})
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getnames() == ["written"]
    assert post(p, "GraphDriver.Changes", {"ID": "g2", "Parent": "g1"})[1] == {
        "Changes": [{"Path": "/written", "Kind": 1}]}

    assert post(p, "GraphDriver.Put", {"ID": "g2"}) == (200, {})
    assert not mounts_below(f"{real}/mnt")
    for id in ("g2", "g1"):
        assert post(p, "GraphDriver.Remove", {"ID": id}) == (200, {})
    assert post(p, "GraphDriver.Exists", {"ID": "g1"}) == (200, {"Exists": False})


def test_parallel_gets_and_puts(served: tuple[kit.Plugin, Path]) -> None:
    """dockerd starts containers at once: eight layers mounted and unmounted together."""
    p, root = served
    ids = [f"par{i}" for i in range(8)]
    assert post(p, "GraphDriver.Create", {"ID": "parbase"}) == (200, {})
    for id in ids:
        assert post(p, "GraphDriver.Create", {"ID": id, "Parent": "parbase"}) == (200, {})
    results: dict[str, Any] = {}

    def one(id: str) -> None:
        for _ in range(3):
            results[id] = post(p, "GraphDriver.Get", {"ID": id})
            Path(results[id][1]["Dir"], id).write_text(id)
            results[id] = (results[id], post(p, "GraphDriver.Put", {"ID": id}))

    threads = [threading.Thread(target=one, args=(id,)) for id in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = os.path.realpath(root)
    for id in ids:
        (got, put) = results[id]
        assert got == (200, {"Dir": f"{real}/mnt/{id}"}) and put == (200, {}), results[id]
        assert (root / "diff" / id / id).read_text() == id
        assert (root / ".aufs" / "refs" / id).read_text().strip() == "0"
    assert not mounts_below(f"{real}/mnt")
    for id in [*ids, "parbase"]:
        assert post(p, "GraphDriver.Remove", {"ID": id}) == (200, {})


def _zeros_tar(size: int) -> Iterator[bytes]:
    """A tar of one file of ``size`` zero bytes, produced piecewise (never whole)."""
    info = tarfile.TarInfo("big")
    info.size = size
    yield info.tobuf(tarfile.PAX_FORMAT)
    block = bytes(1 << 20)
    for _ in range(size // len(block)):
        yield block
    yield bytes(2 * 512)  # end of archive


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_apply_and_diff_stream_without_holding_the_tar(tmp_path: Path) -> None:
    """A 512 MiB layer goes in (chunked) and out (streamed) while the plugin's peak RSS
    stays far below its size."""
    size = 512 << 20
    root = tmp_path / "store"
    with kit.plugin(kit.unique_name(), tmp_path / "plugin.log", "--root", str(root)) as p:
        try:
            assert post(p, "GraphDriver.Create", {"ID": "big"}) == (200, {})
            conn = kit.UnixHTTPConnection(p.sock, timeout=300)
            conn.request("POST", "/GraphDriver.ApplyDiff?id=big&parent=", body=_zeros_tar(size),
                         encode_chunked=True)
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())) == (200, {"Size": size})
            conn.close()
            conn = kit.UnixHTTPConnection(p.sock, timeout=300)
            conn.request("POST", "/GraphDriver.Diff", body=b'{"ID": "big"}')
            resp = conn.getresponse()
            assert resp.status == 200
            total = 0
            while chunk := resp.read(1 << 20):
                total += len(chunk)
            conn.close()
            assert total >= size
            peak = _peak_rss_mib(p.proc.pid)
            print(f"plugin peak RSS {peak:.0f} MiB")
            assert peak < 96
        finally:
            Aufs(root).run("cleanup")


# -- the process: Init remembered, signals, the socket ----------------------------------

def test_restarted_plugin_serves_the_home_of_the_last_init(tmp_path: Path) -> None:
    """dockerd never sends Init again to a plugin that restarted behind its back."""
    name = kit.unique_name()
    home = tmp_path / "data" / name
    with kit.plugin(name, tmp_path / "plugin.log") as p:
        try:
            assert post(p, "GraphDriver.Create", {"ID": "a"})[1] == {
                "Err": "the plugin has no store yet: dockerd has not called GraphDriver.Init "
                       "(start the plugin before dockerd)"}
            assert post(p, "GraphDriver.Init", {"Home": str(home), "Opts": []}) == (200, {})
            assert post(p, "GraphDriver.Create", {"ID": "a"}) == (200, {})
            p.kill9()
            p.start()
            assert post(p, "GraphDriver.Exists", {"ID": "a"}) == (200, {"Exists": True})
            assert post(p, "GraphDriver.Get", {"ID": "a"}) == (200, {"Dir": f"{home}/diff/a"})
            assert post(p, "GraphDriver.Put", {"ID": "a"}) == (200, {})
        finally:
            Aufs(home).run("cleanup")


def test_sigterm_unmounts_and_removes_the_socket(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with kit.plugin(kit.unique_name(), tmp_path / "plugin.log", "--root", str(root)) as p:
        for id, parent in (("b", ""), ("c", "b")):
            assert post(p, "GraphDriver.Create", {"ID": id, "Parent": parent}) == (200, {})
        assert post(p, "GraphDriver.Get", {"ID": "c"})[0] == 200
        assert post(p, "GraphDriver.Put", {"ID": "c"}) == (200, {})
        assert post(p, "GraphDriver.Get", {"ID": "c"})[0] == 200
        assert post(p, "GraphDriver.Cleanup") == (200, {})  # dockerd's shutdown
        assert p.stop() == 0
        assert not os.path.exists(p.sock)
    assert mounts_below(tmp_path) == []
    assert "Traceback" not in p.log.read_text()


def test_sigterm_keeps_what_dockerd_still_holds(tmp_path: Path) -> None:
    """Plugin stopped under a running dockerd: the unions containers stand on stay."""
    root = tmp_path / "store"
    with kit.plugin(kit.unique_name(), tmp_path / "plugin.log", "--root", str(root)) as p:
        try:
            for id, parent in (("b", ""), ("c", "b")):
                assert post(p, "GraphDriver.Create", {"ID": id, "Parent": parent}) == (200, {})
            assert post(p, "GraphDriver.Get", {"ID": "c"})[0] == 200
            assert p.stop() == 0
            assert not os.path.exists(p.sock)
            assert os.path.realpath(root / "mnt" / "c") in mounts_below(tmp_path)
            assert "keeping 1 layer(s) mounted that dockerd still uses" in p.log.read_text()
        finally:
            assert Aufs(root).run("cleanup").code == 0


def test_stale_socket_replaced_live_one_refused(tmp_path: Path) -> None:
    name = kit.unique_name()
    with kit.plugin(name, tmp_path / "a.log", "--root", str(tmp_path / "s")) as p:
        r = subprocess.run([sys.executable, "-m", "aufs", "docker-plugin", "--name", name,
                            "--root", str(tmp_path / "s")], capture_output=True, text=True,
                           env=kit._env(), timeout=60, check=False)
        assert r.returncode == 1
        assert r.stderr.splitlines() == [
            f"aufs: another process already serves {kit.PLUGINS_DIR}/{name}.sock"]
        p.kill9()  # leaves its socket behind
        assert os.path.exists(p.sock)
        p.start()  # takes the stale socket over
        assert post(p, "Plugin.Activate")[0] == 200


@pytest.mark.parametrize(("args", "line"), [
    (["--name", "aufs"], "aufs: the plugin cannot be named 'aufs': dockerd uses its built-in "
                         "aufs driver for that name and never asks a plugin"),
    (["--name", "a/b"], "aufs: invalid plugin name 'a/b'"),
])
def test_bad_names_one_line(args: list[str], line: str) -> None:
    r = subprocess.run([sys.executable, "-m", "aufs", "docker-plugin", *args],
                       capture_output=True, text=True, env=kit._env(), timeout=60, check=False)
    assert (r.returncode, r.stderr.splitlines()) == (2, [line])


def test_sigint_stops_too(tmp_path: Path) -> None:
    with kit.plugin(kit.unique_name(), tmp_path / "p.log", "--root", str(tmp_path / "s")) as p:
        p.proc.send_signal(signal.SIGINT)
        assert p.proc.wait(30) == 0
        assert not os.path.exists(p.sock)


def test_apply_broken_off_leaves_the_layer_untouched(served: tuple[kit.Plugin, Path]) -> None:
    """dockerd dies mid-ApplyDiff: the layer is as it was, the plugin serves on."""
    import socket
    import time

    p, root = served
    assert post(p, "GraphDriver.Create", {"ID": "cut"}) == (200, {})
    big = layer({"a": b"x" * 200_000, "b": b"y" * 10})
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(p.sock)
        s.sendall(b"POST /GraphDriver.ApplyDiff?id=cut&parent= HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n" % 100_000 + big[:100_000] + b"\r\n")
    deadline = time.monotonic() + 30
    while "ApplyDiff: the layer's tar broke off" not in p.log.read_text():
        assert time.monotonic() < deadline, p.log.read_text()
        time.sleep(0.05)
    assert os.listdir(root / "diff" / "cut") == []
    assert "Traceback" not in p.log.read_text()
    assert post(p, "GraphDriver.Remove", {"ID": "cut"}) == (200, {})
