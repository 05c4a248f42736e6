"""NaiveDiffDriver over a driver that only stores and mounts: a copy-based ``vfs`` driver
(Docker's vfs graph driver: a layer is a full copy of its parent), no root needed.
Every ``get`` must be matched by a ``put``, also when something fails."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from aufs.archive import Change, ChangeKind
from aufs.graphdriver import LayerNotFoundError, NaiveDiffDriver, ProtoDriver, Status


class VfsDriver:
    """A ProtoDriver: ``create`` copies the parent, ``get`` returns the directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.refs: dict[str, int] = {}
        self.fail_get: set[str] = set()

    def __str__(self) -> str:
        return "vfs"

    def _dir(self, id: str) -> Path:
        return self.home / id

    def create(self, id: str, parent: str = "") -> None:
        if parent:
            shutil.copytree(self._dir(parent), self._dir(id), symlinks=True)
        else:
            self._dir(id).mkdir(parents=True)

    def remove(self, id: str) -> None:
        shutil.rmtree(self._dir(id))

    def get(self, id: str, mount_label: str = "") -> str:
        if id in self.fail_get or not self.exists(id):
            raise LayerNotFoundError(id)
        self.refs[id] = self.refs.get(id, 0) + 1
        return str(self._dir(id))

    def put(self, id: str) -> None:
        self.refs[id] -= 1

    def exists(self, id: str) -> bool:
        return self._dir(id).is_dir()

    def status(self) -> Status:
        return [("Root Dir", str(self.home))]

    def cleanup(self) -> None:
        pass


@pytest.fixture
def vfs(tmp_path: Path) -> VfsDriver:
    d = VfsDriver(tmp_path / "vfs")
    d.create("base")
    root = Path(d.get("base"))
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root")
    (root / "gone").write_text("gone")
    d.put("base")
    d.create("top", "base")
    root = Path(d.get("top"))
    (root / "etc" / "passwd").write_text("root,user")
    (root / "gone").unlink()
    (root / "new").write_text("new!")
    os.utime(root / "etc", (1, 1))
    d.put("top")
    return d


def balanced(d: VfsDriver) -> bool:
    return all(n == 0 for n in d.refs.values())


def test_is_a_proto_driver(vfs: VfsDriver) -> None:
    assert isinstance(vfs, ProtoDriver)
    naive = NaiveDiffDriver(vfs)
    assert str(naive) == "vfs" and naive.exists("top") and naive.status()[0][0] == "Root Dir"


def test_changes_and_size(vfs: VfsDriver) -> None:
    naive = NaiveDiffDriver(vfs)
    assert naive.changes("top", "base") == [
        Change("/etc", ChangeKind.MODIFY), Change("/etc/passwd", ChangeKind.MODIFY),
        Change("/gone", ChangeKind.DELETE), Change("/new", ChangeKind.ADD)]
    assert [str(c) for c in naive.changes("base")] == ["A /etc", "A /etc/passwd", "A /gone"]
    assert naive.diff_size("top", "base") == len("root,user") + len("new!")
    assert naive.diff_size("base") == len("root") + len("gone")
    assert balanced(vfs)


def test_diff_holds_the_layer_until_closed(vfs: VfsDriver) -> None:
    naive = NaiveDiffDriver(vfs)
    stream = naive.diff("top", "base")
    assert vfs.refs == {"base": 0, "top": 1}
    data = stream.read()
    stream.close()
    assert balanced(vfs)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["etc", "etc/passwd", ".wh.gone", "new"]
    with naive.diff("top") as whole, tarfile.open(fileobj=io.BytesIO(whole.read())) as tar:
        assert tar.getnames() == ["etc", "etc/passwd", "new"]
    assert balanced(vfs)


def test_failing_parent_get_releases_the_layer(vfs: VfsDriver) -> None:
    naive = NaiveDiffDriver(vfs)
    vfs.fail_get.add("base")
    for call in (lambda: naive.diff("top", "base"), lambda: naive.changes("top", "base"),
                 lambda: naive.diff_size("top", "base")):
        with pytest.raises(LayerNotFoundError):
            call()
    assert vfs.refs["top"] == 0


def test_unknown_layer(vfs: VfsDriver) -> None:
    naive = NaiveDiffDriver(vfs)
    with pytest.raises(LayerNotFoundError):
        naive.diff("nope")
    assert balanced(vfs)


def test_apply_diff_extracts_into_the_mounted_layer(vfs: VfsDriver) -> None:
    """Uses aufs.archive.apply's directory extractor when there is one."""

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("applied")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    buf.seek(0)
    naive = NaiveDiffDriver(vfs)
    size = naive.apply_diff("top", "base", buf)
    assert (vfs.home / "top" / "applied").read_bytes() == b"hello"
    assert size == naive.diff_size("top", "base")
    assert balanced(vfs)
