"""The real dockerd (20.10) on our store through the plugin, against overlay2 doing the same.

One overlay2 dockerd and, per engine, one plugin + dockerd pair serve the whole module; the
tests below run in file order on that shared state (the scenario's images and container c1).
The plugin is a real ``python -m aufs docker-plugin`` process; dockerd finds it by its
socket in /run/docker/plugins under a unique name.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import daemons
from tests.cli.kit import Aufs
from tests.conftest import require_engine
from tests.docker import kit, scenario
from tests.leaks import fuse_daemons_below, mounts_below
from tests.reliability.invariants import store_problems

pytestmark = [pytest.mark.slow, pytest.mark.root]

_reason = daemons.skip_reason_docker() or kit.skip_reason_busybox()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


@pytest.fixture(scope="module")
def rootfs() -> bytes:
    return kit.rootfs_tar()


@pytest.fixture(scope="module")
def ref(rootfs: bytes) -> Iterator[tuple[daemons.Dockerd, scenario.Results]]:
    """overlay2 doing the scenario: what the plugin's results must equal."""
    base = Path(tempfile.mkdtemp(prefix="ad", dir="/tmp"))
    try:
        with daemons.dockerd(base, "overlay2") as d:
            yield d, scenario.run_scenario(d, rootfs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Env:
    engine: str
    base: Path
    plugin: kit.Plugin
    d: daemons.Dockerd
    results: scenario.Results

    @property
    def home(self) -> str:
        return str(self.base / "data" / self.plugin.name)


@pytest.fixture(scope="module", params=["overlay", "fuse-overlayfs"])
def env(request: pytest.FixtureRequest, rootfs: bytes) -> Iterator[Env]:
    engine: str = request.param
    require_engine(engine)
    base = Path(tempfile.mkdtemp(prefix="ad", dir="/tmp"))
    name = kit.unique_name()
    try:
        with kit.plugin(name, base / "plugin.log", "--engine", engine, "-v") as p, \
                daemons.dockerd(base, name, experimental=True) as d:
            yield Env(engine, base, p, d, scenario.run_scenario(d, rootfs))
        assert not mounts_below(base), mounts_below(base)
        assert not fuse_daemons_below(base)
    finally:
        daemons._unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


NET = ("--network", "none")


# -- the scenario, compared with overlay2 -----------------------------------------------

def test_info_names_the_plugin(env: Env) -> None:
    info = env.d.out("info", "--format", "{{.Driver}} {{json .DriverStatus}}")
    assert info.startswith(env.plugin.name + " ")
    assert f'["Engine","{env.engine}"]' in info
    assert f'["Root Dir","{os.path.realpath(env.home)}"]' in info


def test_build_gives_overlay2s_tree(env: Env, ref: tuple[daemons.Dockerd, scenario.Results],
                                    ) -> None:
    fp = env.results.built
    assert "./data/suid|4755|0|0|regular file|1" in fp
    assert "./data/keep|644|0|0|regular file|2" in fp  # hard-linked with /data/hard
    assert "./data/dir/sub" not in fp and "./data/gone" not in fp
    assert "./usr/share/doc/base" not in fp
    assert fp == ref[1].built


def test_docker_diff_equals_overlay2s(env: Env, ref: tuple[daemons.Dockerd, scenario.Results],
                                      ) -> None:
    assert "D /data/sym" in env.results.diff and "A /new/deep/f" in env.results.diff
    assert env.results.diff == ref[1].diff


def test_commit_gives_overlay2s_tree(env: Env, ref: tuple[daemons.Dockerd, scenario.Results],
                                     ) -> None:
    assert "./new/zeros" in env.results.committed
    ours, theirs = env.results.committed, ref[1].committed
    if env.engine == "fuse-overlayfs":
        ours, theirs = (_fuse_fingerprint(t) for t in (ours, theirs))
    assert ours.splitlines() == theirs.splitlines()


def test_export_equals_overlay2s(env: Env, ref: tuple[daemons.Dockerd, scenario.Results],
                                 ) -> None:
    ours, theirs = env.results.export, ref[1].export
    if env.engine == "fuse-overlayfs":
        ours, theirs = _fuse_layer(ours), _fuse_layer(theirs)
    assert ours == theirs


def test_save_equals_overlay2s(env: Env, ref: tuple[daemons.Dockerd, scenario.Results]) -> None:
    assert len(env.results.save) == 5  # base + 3 RUN + the commit
    ours, theirs = env.results.save, ref[1].save
    if env.engine == "fuse-overlayfs":
        ours, theirs = [_fuse_layer(x) for x in ours], [_fuse_layer(x) for x in theirs]
    assert ours == theirs


# What fuse-overlayfs 1.10 itself does differently from kernel overlayfs, left out of the
# comparisons on that engine only (Docker's own fuse-overlayfs driver shows the same):
# - a directory it copies up loses its setgid bit (mkdir(2) drops S_ISGID and it does
#   not chmod afterwards; its own view keeps showing it until remounted);
# - a file whose hard-linked twin a layer above hides counts the visible links only;
# - the store keeps AUFS whiteouts as files (mode 0700 for an opaque marker), where
#   Docker's tar gives the marker its directory's mode: a whiteout's mode means nothing.

def _fuse_fingerprint(text: str) -> str:
    text = re.sub(r"(?m)\|[0-7]*?([0-7]{3})(\|\d+\|\d+\|directory)$", r"|\1\2", text)
    return re.sub(r"(?m)(regular file)\|\d+$", r"\1", text)


def _fuse_layer(layer: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    out = []
    for e in layer:
        name = str(e[0])
        if e[1] == b"5":
            e = (*e[:2], oct(int(str(e[2]), 8) & 0o777), *e[3:])
        elif name.rsplit("/", 1)[-1].startswith(".wh."):
            e = (*e[:2], "", *e[3:])
        out.append(e)
    return out


def test_save_survives_a_round_trip_through_overlay2(
        env: Env, ref: tuple[daemons.Dockerd, scenario.Results]) -> None:
    """Loaded into overlay2 and saved again, the layers are the same bytes: what dockerd
    rebuilt from our mounts (tar-split + Get) is exactly what it had stored. ``ref`` has
    the base layer already (its load skips that tar), so every tar is also hashed here
    against the config's diff ids."""
    hashed, diff_ids = daemons.layer_diff_ids(env.results.save_raw)
    assert hashed == diff_ids
    tag = f"rt-{env.engine}:1"
    loaded = ref[0].out("load", input=env.results.save_raw)
    image = loaded.split()[-1]
    ref[0].out("tag", image, tag)
    again = ref[0].run("save", tag).stdout
    ref[0].out("rmi", tag)  # only ours: ``image`` may be ref's own tag (committed:1)
    assert scenario.save_layers(again) == scenario.save_layers(env.results.save_raw)


# -- concurrency, restart, crashes ------------------------------------------------------

def test_eight_parallel_runs(env: Env) -> None:
    outs: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            outs[i] = env.d.out("run", "--rm", *NET, "built:1", "sh", "-c",
                                f"echo {i} > /data/me; cat /data/me /data/keep")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert outs == {i: f"{i}\nkeep" for i in range(8)}


def test_restart_keeps_images_containers_changes(env: Env) -> None:
    images = sorted(env.d.out("images", "-aq", "--no-trunc").split())
    before = sorted(env.d.out("diff", "c1").splitlines())
    daemons.restart(env.d)
    assert sorted(env.d.out("images", "-aq", "--no-trunc").split()) == images
    assert "c1" in env.d.out("ps", "-a", "--format", "{{.Names}}").split()
    assert sorted(env.d.out("diff", "c1").splitlines()) == before
    assert env.d.out("run", "--rm", *NET, "committed:1", "cat", "/new/deep/f") == "x"


def _wait_log(plugin: kit.Plugin, pattern: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, plugin.log.read_text(errors="replace")):
            return
        time.sleep(0.005)
    raise AssertionError(f"the plugin never logged {pattern!r}")


def test_kill9_during_run_then_restart(env: Env) -> None:
    """The plugin dies while a container runs: the container keeps its root (the mount
    outlives the plugin); the restarted plugin (no Init: it remembers the Home) serves
    dockerd's next calls — dockerd retries while the socket is gone."""
    proc = subprocess.Popen(
        [str(daemons.DOCKER), "-H", env.d.host, "run", "--name", "k1", *NET, "built:1", "sh",
         "-c", "while [ ! -e /go ]; do sleep 0.1; done; echo done > /done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while env.d.run("inspect", "-f", "{{.State.Running}}", "k1",
                        check=False).stdout.strip() != b"true":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        env.plugin.kill9()
        time.sleep(0.5)
        env.plugin.start()
        env.d.out("exec", "k1", "touch", "/go")  # its root outlived the plugin
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert "A /done" in env.d.out("diff", "k1").splitlines()
    env.d.out("rm", "k1")
    _checks_clean(env.home)


def _checks_clean(home: str) -> None:
    """The store is whole by our invariants and by ``aufs check`` (the user's tool)."""
    assert store_problems(home) == []
    r = Aufs(Path(home)).run("check", "--json")
    assert r.code == 0 and r.json()["clean"], r.out + r.err


def test_kill9_during_commit_then_restart(env: Env) -> None:
    env.d.out("run", "--name", "big", *NET, "built:1", "dd", "if=/dev/urandom", "of=/big",
              "bs=1M", "count=50")
    mark = len(env.plugin.log.read_bytes())
    commit = subprocess.Popen([str(daemons.DOCKER), "-H", env.d.host, "commit", "big",
                               "bigimg:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while b"Diff " not in env.plugin.log.read_bytes()[mark:]:
            assert time.monotonic() < deadline and commit.poll() is None
            time.sleep(0.002)
        env.plugin.kill9()
        env.plugin.start()  # within dockerd's 30 s of retries
        commit.communicate(timeout=120)
    finally:
        if commit.poll() is None:
            commit.kill()
        commit.communicate()
    if commit.returncode != 0:  # the usual case: the tar stream broke
        env.d.out("commit", "big", "bigimg:1")
    digest = env.d.out("run", "--rm", *NET, "bigimg:1", "md5sum", "/big").split()[0]
    cp = env.d.run("cp", "big:/big", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(cp)) as tar:
        f = tar.extractfile("big")
        assert f is not None
        assert hashlib.md5(f.read()).hexdigest() == digest
    env.d.out("rm", "big")
    env.d.out("rmi", "bigimg:1")
    assert env.d.out("run", "--rm", *NET, "built:1", "true") == ""
    _checks_clean(env.home)


def test_rm_rmi_leave_nothing(env: Env) -> None:
    ids = env.d.out("ps", "-aq").split()
    if ids:
        env.d.out("rm", "-f", *ids)
    tags = env.d.out("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    env.d.out("rmi", *tags)  # their untagged parents (the build's steps) go with them
    assert env.d.out("images", "-aq") == ""
    home = env.home
    assert os.listdir(os.path.join(home, "layers")) == []
    assert os.listdir(os.path.join(home, "diff")) == []
    assert os.listdir(os.path.join(home, "mnt")) == []
    assert [m for m in mounts_below(home) if m != os.path.realpath(home)] == []
    refs = os.path.join(home, ".aufs", "refs")
    assert [n for n in os.listdir(refs) if Path(refs, n).read_text().strip() != "0"] == []
    _checks_clean(home)

