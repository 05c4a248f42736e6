"""``aufs.layer_format`` writes only through directory fds opened without following a
symlink: a directory of the layer swapped for a symlink while a layer is converted never
redirects a write (a copy across filesystems, a removal) outside the layer or the store.

The swap is made at the moment a concurrent process would make it: just before the
conversion moves a housekeeping entry between the layer and the store's attic, here on
two filesystems (the layer on a tmpfs of its own), so the move is a copy and a removal.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from aufs.layer_format import normalize_layer
from aufs.store.layout import Layout
from aufs.whiteout import AUFS, OVERLAY

PLNK = ".wh..wh.plnk"


def _snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(path)): (p.lstat().st_mode,
                                       p.read_bytes() if p.is_file() and not p.is_symlink()
                                       else b"")
            for p in sorted(path.rglob("*"))}


def _swap_before_moving(layer: Path, outside: Path,
                        real_rename: Callable[..., None]) -> Callable[..., None]:
    """os.rename that, when asked to move the housekeeping entry the first time, first
    replaces ``layer/sub`` by a symlink to ``outside`` (the directory itself moves to
    ``layer/sub.real``)."""
    done: list[bool] = []

    def rename(src: str, dst: str, *args: object, **kwargs: object) -> None:
        if not done and os.path.basename(os.fsdecode(src)) == PLNK:
            done.append(True)
            real_rename(layer / "sub", layer / "sub.real")
            os.symlink(outside, layer / "sub")
        real_rename(src, dst, *args, **kwargs)

    return rename


@pytest.mark.parametrize("direction", ["to-overlay", "back-to-aufs"])
def test_a_directory_swapped_for_a_symlink_redirects_no_write(
        tmp_path: Path, tmpfs: Path, monkeypatch: pytest.MonkeyPatch, direction: str) -> None:
    layout = Layout.at(str(tmp_path / "store"))
    os.makedirs(layout.private_dir)
    layer = tmpfs / "layer"  # another filesystem than the store's attic: copy + remove
    (layer / "sub" / PLNK).mkdir(parents=True)
    (layer / "sub" / PLNK / "1234.5").write_text("pseudo-link")
    (layer / "sub" / ".wh.gone").touch()
    for path, mode in ((layer / "sub" / PLNK / "1234.5", 0o640), (layer / "sub" / PLNK, 0o750)):
        path.chmod(mode)
        os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    outside = tmp_path / "outside"  # what the symlink points at: must stay as it is
    (outside / PLNK).mkdir(parents=True)
    (outside / PLNK / "secret").write_text("not the layer's")
    (outside / "kept").write_text("kept")
    before = _snapshot(outside)
    attic = Path(layout.attic("x"))
    if direction == "back-to-aufs":
        normalize_layer(layout, "x", str(layer), OVERLAY)  # housekeeping into the attic
        assert (attic / "sub" / PLNK / "1234.5").read_text() == "pseudo-link"
    monkeypatch.setattr(os, "rename", _swap_before_moving(layer, outside, os.rename))
    normalize_layer(layout, "x", str(layer), OVERLAY if direction == "to-overlay" else AUFS)
    monkeypatch.undo()
    assert _snapshot(outside) == before
    real = layer / "sub.real"
    if direction == "to-overlay":  # the layer's own entry went to the attic, whole
        assert (attic / "sub" / PLNK / "1234.5").read_text() == "pseudo-link"
        assert not (attic / "sub" / PLNK / "secret").exists()
        for path, mode in ((attic / "sub" / PLNK / "1234.5", 0o640), (attic / "sub" / PLNK, 0o750)):
            st = path.lstat()  # copied whole: mode and times too
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (mode, 2_000_000_000)
        assert not (real / PLNK).exists()
        assert stat.S_ISCHR((real / "gone").lstat().st_mode)
    else:  # back into the directory it came from (now sub.real), whole
        assert (real / PLNK / "1234.5").read_text() == "pseudo-link"
        assert not (real / PLNK / "secret").exists() and not attic.exists()
        assert (real / ".wh.gone").is_file()
