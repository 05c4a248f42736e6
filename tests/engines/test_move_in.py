"""``Driver.move_in``: a directory becomes the files of an existing layer (what migrate
does for each layer), its whiteouts converted first, renamed in, or symlinked only where
a pre-0.7 graph keeps a layer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import aufs
from aufs.graphdriver import DriverError, InvalidLayerIDError, LayerNotFoundError


def _layer_dir(path: Path) -> Path:
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "kept").write_text("kept")
    (path / ".wh.gone").touch()  # an AUFS whiteout
    return path


def _tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.lstat().st_mode for p in sorted(path.rglob("*"))}


def test_a_directory_is_renamed_in_with_the_stores_whiteouts(overlay_driver: aufs.Driver,
                                                            tmp_path: Path) -> None:
    d = overlay_driver
    src = _layer_dir(tmp_path / "anywhere")
    d.create("x")
    d.move_in("x", str(src))
    diff = Path(d.layout.diff("x"))
    assert not diff.is_symlink() and not src.exists()
    assert (diff / "etc" / "kept").read_text() == "kept"
    assert stat.S_ISCHR((diff / "gone").lstat().st_mode)  # overlay's whiteout now
    assert not (diff / ".wh.gone").exists()
    assert {str(c) for c in d.changes("x")} == {"A /etc", "A /etc/kept", "D /gone"}


def test_only_a_graphs_layer_may_stay_outside_as_a_symlink(overlay_driver: aufs.Driver,
                                                          tmp_path: Path, tmpfs: Path) -> None:
    d = overlay_driver
    d.create("x")
    d.create("y")
    try:
        other = _layer_dir(tmpfs / "data")  # another filesystem: no rename
        with pytest.raises(DriverError, match="symlink is kept only"):
            d.move_in("x", str(other))
        assert os.path.isdir(d.layout.diff("x")) and not os.path.islink(d.layout.diff("x"))
        assert (other / "etc" / "kept").read_text() == "kept"
        graph = _layer_dir(tmpfs / "graph" / "y" / "layer")
        d.move_in("y", str(graph))
        assert os.readlink(d.layout.diff("y")) == str(graph)
        assert {str(c) for c in d.changes("y")} == {"A /etc", "A /etc/kept", "D /gone"}
    finally:
        d.cleanup()


@pytest.mark.parametrize("case", ["unknown", "bad-id", "symlink", "file", "has-files",
                                  "linked-elsewhere"])
def test_refusals_change_nothing(overlay_driver: aufs.Driver, tmp_path: Path,
                                 case: str) -> None:
    d = overlay_driver
    src = _layer_dir(tmp_path / "docker" / "graph" / "x" / "layer")
    arg = src
    d.create("x")
    expected: type[Exception] = DriverError
    if case == "unknown":
        d.remove("x")
        expected = LayerNotFoundError
    elif case == "bad-id":
        expected = InvalidLayerIDError
    elif case == "symlink":  # a symlink to a directory: neither moved nor converted
        arg = tmp_path / "docker" / "graph" / "x" / "link"
        arg.symlink_to(src)
    elif case == "file":
        arg = tmp_path / "a-file"
        arg.write_text("")
    elif case == "has-files":
        Path(d.layout.diff("x"), "data").write_text("the layer's own")
    else:  # a migration's symlink, to another directory than this one
        os.rmdir(d.layout.diff("x"))
        os.symlink(tmp_path / "elsewhere" / "graph" / "x" / "layer", d.layout.diff("x"))
        arg = tmp_path / "other"
        _layer_dir(arg)
    before = _tree(tmp_path)  # the store and the directories to move: nothing changes
    with pytest.raises(expected):
        d.move_in("bad id" if case == "bad-id" else "x", str(arg))
    assert _tree(tmp_path) == before
