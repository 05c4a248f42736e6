"""``aufs docker-adopt`` with the real dockerd: a legacy aufs data root opened under the
plugin keeps its images and containers; ``--undo`` gives it back.

There is no AUFS kernel here, so the legacy data root is made the other way round: a
plugin-driven dockerd builds images and a container, then the data root is renamed to
what Docker's aufs driver writes — ``aufs/`` and ``image/aufs/``, ``"Driver": "aufs"`` in
the container's config, AUFS whiteouts (``aufs convert --to aufs``), no ``.aufs/`` of
ours, AUFS housekeeping (``.wh..wh.aufs``, ``.wh..wh.orph/``, ``.wh..wh.plnk/``) in
every layer.

What this cannot show: a store the AUFS kernel module wrote itself (its own whiteouts,
pseudo-links in ``.wh..wh.plnk``, xino files), metadata written by dockerd's own aufs
driver (here dockerd wrote it for the plugin; the layer store code is the same, only
the directory name differs), images from older Docker versions (v1 graph migration),
``dirperm1``. That is checked on an AUFS kernel, outside CI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests import daemons
from tests.cli.kit import Aufs
from tests.conftest import require_engine
from tests.docker import kit, scenario
from tests.leaks import fuse_daemons_below, mounts_below

pytestmark = [pytest.mark.slow, pytest.mark.root]
_reason = daemons.skip_reason_docker() or kit.skip_reason_busybox()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))

NET = ("--network", "none")
OLD = ("test -e /mark || { echo first > /mark; rm /data/keep; echo more >> /etc/motd; }; "
       "cat /mark")


def _legacify(data: Path, name: str) -> None:
    """Make the plugin's data root look like Docker's aufs driver's."""
    store = data / name
    r = Aufs(store).run("convert", "--to", "aufs")
    assert r.code == 0, r.err
    shutil.rmtree(store / ".aufs")
    for layer in os.listdir(store / "diff"):
        d = store / "diff" / layer
        (d / ".wh..wh.aufs").write_bytes(b"")
        (d / ".wh..wh.orph").mkdir()
        (d / ".wh..wh.plnk").mkdir()
    store.rename(data / "aufs")
    (data / "image" / name).rename(data / "image" / "aufs")
    for config in data.glob("containers/*/config.v2.json"):
        c = json.loads(config.read_text())
        assert c["Driver"] == name
        config.write_text(json.dumps({**c, "Driver": "aufs"}))


def test_adopt_a_legacy_aufs_data_root() -> None:
    require_engine("fuse-overlayfs")  # what opens AUFS whiteouts without AUFS
    base = Path(tempfile.mkdtemp(prefix="aa", dir="/tmp"))
    name = kit.unique_name()
    data = base / "data"
    try:
        with kit.plugin(name, base / "plugin1.log", "--engine", "overlay"), \
                daemons.dockerd(base, name, experimental=True) as d:
            d.out("import", "-", "base:1", input=kit.rootfs_tar())
            scenario.build(d, "built:1")
            assert d.out("run", "--name", "old", *NET, "built:1", "sh", "-c", OLD) == "first"
            diff = sorted(d.out("diff", "old").splitlines())
            images = sorted(d.out("images", "--format", "{{.Repository}}:{{.Tag}}").split())
        assert "D /data/keep" in diff and images == ["base:1", "built:1"]
        _legacify(data, name)

        r = Aufs(base).run("docker-adopt", "--data-root", str(data), "--name", name,
                           root=False)
        assert r.code == 0, r.err
        assert r.out.splitlines()[:3] == [
            f"store: {data}/aufs -> {name} (renamed)",
            f"images: image/aufs -> image/{name} (renamed)",
            f"containers: 1 moved to driver {name}"]

        with kit.plugin(name, base / "plugin2.log"), \
                daemons.dockerd(base, name, experimental=True) as d:
            info = d.out("info", "--format", "{{json .DriverStatus}}")
            assert '["Engine","fuse-overlayfs"]' in info and '["Whiteout Format","aufs"]' in info
            assert sorted(d.out("images", "--format",
                                "{{.Repository}}:{{.Tag}}").split()) == images
            assert d.out("start", "-a", "old") == "first"  # its old changes are there
            assert sorted(d.out("diff", "old").splitlines()) == diff
            assert d.out("run", "--rm", *NET, "built:1", "cat", "/data/keep") == "keep"
            assert d.out("run", "--rm", *NET, "built:1", "sh", "-c",
                         "ls /data/dir; test ! -e /data/gone && echo gone") == "g\nrel\ngone"

        r = Aufs(base).run("docker-adopt", "--data-root", str(data), "--name", name,
                           "--undo", root=False)
        assert r.code == 0, r.err
        assert (data / "aufs" / "layers").is_dir() and not (data / name).exists()
        assert (data / "image" / "aufs" / "imagedb").is_dir()
        drivers = {json.loads(c.read_text())["Driver"]
                   for c in data.glob("containers/*/config.v2.json")}
        assert drivers == {"aufs"}
        assert not mounts_below(base) and not fuse_daemons_below(base)
    finally:
        daemons._unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)
