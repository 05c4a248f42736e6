"""``docker-adopt`` on a data root laid out as Docker's aufs driver leaves it: the three
renames, what is left alone, a crash at every step (finished by running again, or
undone by --undo), and the refusals."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aufs._sys.files import write_atomic
from aufs.docker import adopt
from aufs.docker.plugin import GraphDriverPlugin, PluginError

NAME = "aufs-plugin"
LAYER = "9f" * 32
CONTAINERS: dict[str, dict[str, Any]] = {
    "c1": {"ID": "c1", "Driver": "aufs", "Name": "/one", "Config": {"Cmd": ["sh", "<&>"]}},
    "c2": {"ID": "c2", "Driver": "", "Name": "/two"},  # restored under aufs only
    "c3": {"ID": "c3", "Driver": "overlay2", "Name": "/three"},  # not ours: left alone
}


def legacy(data: Path) -> Path:
    """A data root as Docker's aufs driver writes it (what matters here)."""
    for d in ("aufs/layers", f"aufs/diff/{LAYER}/etc", f"aufs/mnt/{LAYER}",
              "image/aufs/imagedb/content/sha256", "image/aufs/layerdb/sha256/abc",
              "containers/c4", "volumes"):
        (data / d).mkdir(parents=True, exist_ok=True)
    (data / f"aufs/layers/{LAYER}").write_text("")
    (data / f"aufs/diff/{LAYER}/etc/motd").write_text("old\n")
    (data / f"aufs/diff/{LAYER}/.wh..wh.aufs").write_text("")
    (data / "image/aufs/layerdb/sha256/abc/cache-id").write_text(LAYER)
    (data / "image/aufs/repositories.json").write_text('{"Repositories":{}}')
    for cid, config in CONTAINERS.items():
        (data / "containers" / cid).mkdir(parents=True, exist_ok=True)
        (data / "containers" / cid / "config.v2.json").write_text(
            json.dumps(config, separators=(",", ":")))
    return data


def tree(data: Path) -> dict[str, str]:
    """Every path under ``data``: a directory, a link's target, or a file's content."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(data):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(data))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_text()
    return out


def drivers(data: Path) -> dict[str, str]:
    return {cid: json.loads((data / "containers" / cid / "config.v2.json").read_text())["Driver"]
            for cid in CONTAINERS}


def test_adopt_renames_three_things_and_undo_restores(tmp_path: Path) -> None:
    data = legacy(tmp_path / "docker")
    before = tree(data)
    ino = os.stat(data / f"aufs/diff/{LAYER}/etc/motd").st_ino
    report = adopt.run(str(data), NAME)
    assert (report.store, report.images, report.containers) == ("renamed", "renamed",
                                                                 ["c1", "c2"])
    assert not (data / "aufs").exists() and not (data / "image/aufs").exists()
    assert os.stat(data / f"{NAME}/diff/{LAYER}/etc/motd").st_ino == ino  # not rewritten
    assert (data / f"image/{NAME}/layerdb/sha256/abc/cache-id").read_text() == LAYER
    assert drivers(data) == {"c1": NAME, "c2": NAME, "c3": "overlay2"}
    c1 = json.loads((data / "containers/c1/config.v2.json").read_text())
    assert c1 == {**CONTAINERS["c1"], "Driver": NAME}  # nothing else changed
    assert not (data / adopt.JOURNAL).exists()
    assert report.lines()[-1] == (f"next: aufs docker-plugin --name {NAME}, then dockerd "
                                  f"--experimental -s {NAME} --data-root {data}")

    undone = adopt.run(str(data), NAME, undo=True)
    assert undone.containers == ["c1", "c2"]
    after = tree(data)
    assert drivers(data) == {"c1": "aufs", "c2": "aufs", "c3": "overlay2"}
    # c2 had no Driver (""): given back as "aufs", which dockerd reads the same way.
    assert {k: v for k, v in after.items() if k != "containers/c2/config.v2.json"} == {
        k: v for k, v in before.items() if k != "containers/c2/config.v2.json"}


class Crash(BaseException):
    pass


def _crash_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Let ``n`` changes of the data root happen, then die at the next one."""
    count = [0]

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        def step(*args: object) -> None:
            if count[0] == n:
                raise Crash
            count[0] += 1
            fn(*args)
        return step

    monkeypatch.setattr(adopt, "_rename", wrap(adopt._rename))
    monkeypatch.setattr(adopt, "write_atomic", wrap(write_atomic))


STEPS = 5  # the journal, the store, the image dir, two container configs


@pytest.mark.parametrize("undo", [False, True], ids=["run-again", "undo"])
@pytest.mark.parametrize("n", range(STEPS))
def test_crash_at_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int,
                             undo: bool) -> None:
    data = legacy(tmp_path / "docker")
    original = tree(data)
    done = legacy(tmp_path / "reference")
    adopt.run(str(done), NAME)
    with monkeypatch.context() as m:
        _crash_after(m, n)
        with pytest.raises(Crash):
            adopt.run(str(data), NAME)
    if n > 0:  # the journal is there: the plugin will not open the store meanwhile
        assert adopt.pending(str(data)) == {"from": "aufs", "to": NAME}
        with pytest.raises(PluginError, match="was interrupted"):
            GraphDriverPlugin(NAME, state_dir=str(tmp_path / "state")).init(
                {"Home": str(data / NAME)})
    if n == 0 and undo:  # died before it began: nothing to undo
        with pytest.raises(adopt.AdoptError, match="nothing to do"):
            adopt.run(str(data), NAME, undo=undo)
        assert tree(data) == original
        return
    report = adopt.run(str(data), NAME, undo=undo)
    assert report.finished_interrupted == (n > 0)
    assert not (data / adopt.JOURNAL).exists()
    if undo:
        got = tree(data)
        assert {k: v for k, v in got.items() if "c2" not in k} == {
            k: v for k, v in original.items() if "c2" not in k}
    else:
        assert tree(data) == tree(done)


def test_refusals(tmp_path: Path) -> None:
    data = legacy(tmp_path / "docker")
    with pytest.raises(adopt.AdoptError, match="cannot be 'aufs'"):
        adopt.run(str(data), "aufs")
    with pytest.raises(adopt.AdoptError, match="no such data root"):
        adopt.run(str(tmp_path / "nowhere"), NAME)
    with pytest.raises(adopt.AdoptError, match="nothing to do"):
        adopt.run(str(data), NAME, undo=True)
    (data / NAME).mkdir()  # dockerd was started with -s NAME once
    with pytest.raises(adopt.AdoptError, match=f"both {data}/aufs and {data}/{NAME} exist"):
        adopt.run(str(data), NAME)
    (data / NAME).rmdir()
    adopt.run(str(data), NAME)
    with pytest.raises(adopt.AdoptError, match="nothing to do"):
        adopt.run(str(data), NAME)
    (data / adopt.JOURNAL).write_text(json.dumps({"from": "aufs", "to": "other"}))
    with pytest.raises(adopt.AdoptError, match="interrupted run between aufs and other"):
        adopt.run(str(data), NAME, undo=True)
    (data / adopt.JOURNAL).unlink()
    os.mkfifo(data / adopt.JOURNAL)  # read without waiting for a writer
    with pytest.raises(adopt.AdoptError, match=r"is unreadable: .* is a FIFO"):
        adopt.run(str(data), NAME, undo=True)
    (data / adopt.JOURNAL).unlink()
    (data / adopt.JOURNAL).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(adopt.AdoptError, match=r"is unreadable: .* is a symlink"):
        adopt.run(str(data), NAME, undo=True)
    (data / adopt.JOURNAL).unlink()
    empty = tmp_path / "empty"
    (empty / "aufs").mkdir(parents=True)
    with pytest.raises(adopt.AdoptError, match="has no layers/"):
        adopt.run(str(empty), NAME)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_running_containers_refused_mount_point_linked(tmp_path: Path) -> None:
    import subprocess

    data = legacy(tmp_path / "docker")
    mnt = data / f"aufs/mnt/{LAYER}"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        with pytest.raises(adopt.AdoptError, match=f"{mnt} is mounted: stop dockerd"):
            adopt.run(str(data), NAME)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    # DATA/aufs on a filesystem of its own cannot be renamed: the plugin's Home is a link.
    subprocess.run(["mount", "--bind", str(data / "aufs"), str(data / "aufs")], check=True)
    try:
        assert adopt.run(str(data), NAME).store == "linked"
        assert os.readlink(data / NAME) == "aufs"
        assert drivers(data)["c1"] == NAME
        assert adopt.run(str(data), NAME, undo=True).store == "unlinked"
        assert not os.path.lexists(data / NAME)
        assert drivers(data)["c1"] == "aufs"
    finally:
        subprocess.run(["umount", str(data / "aufs")], check=True)


def test_plugin_refuses_to_start_a_new_store_beside_a_legacy_one(tmp_path: Path) -> None:
    data = legacy(tmp_path / "docker")
    plugin = GraphDriverPlugin(NAME, state_dir=str(tmp_path / "state"))
    with pytest.raises(PluginError, match=f"{data} holds the images of Docker's aufs driver: "
                                          f"stop dockerd and run aufs docker-adopt"):
        plugin.init({"Home": str(data / NAME)})
    assert not (data / NAME).exists()


def test_a_container_config_that_is_no_object_is_a_clear_refusal(tmp_path: Path) -> None:
    data = legacy(tmp_path / "docker")
    (data / "containers" / "c9").mkdir()
    (data / "containers" / "c9" / "config.v2.json").write_text("[1, 2]")
    with pytest.raises(adopt.AdoptError, match="not a container config"):
        adopt.run(str(data), NAME)
