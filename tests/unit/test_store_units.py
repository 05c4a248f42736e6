"""Pure parts of the store: ids, options, the layers file, mountinfo, whiteout mapping."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import aufs
from aufs._sys import mountinfo
from aufs.graphdriver import InvalidLayerIDError
from aufs.options import DriverOptions, parse
from aufs.store.layers import format_chain, parse_chain
from aufs.store.layout import is_valid_id, validate_id
from aufs.whiteout import AUFS, OVERLAY, Kind, classify, classify_name

VALID = ["1", "a" * 128, "A-b_c.d", "." + "x", "..x", "f" * 64, "f" * 64 + "-init", "x-removingx"]
INVALID = ["", ".", "..", "a" * 129, "a/b", "/a", "a b", "a\n", "x-removing", "é", "a:b", "a,b"]


@pytest.mark.parametrize("layer_id", VALID)
def test_valid_ids(layer_id: str) -> None:
    assert validate_id(layer_id) == layer_id
    assert is_valid_id(layer_id)


@pytest.mark.parametrize("layer_id", [*INVALID, None, 1])
def test_invalid_ids(layer_id: object) -> None:
    with pytest.raises(InvalidLayerIDError):
        validate_id(layer_id)
    assert not is_valid_id(layer_id)


def test_invalid_id_error_is_value_error() -> None:
    assert issubclass(InvalidLayerIDError, ValueError)


@pytest.mark.parametrize(
    ("opts", "engine"),
    [((), "auto"), (["aufs.engine=overlay"], "overlay"), (["aufs.engine = fuse-overlayfs"],
                                                          "fuse-overlayfs")],
)
def test_options(opts: list[str], engine: str) -> None:
    assert parse(opts) == DriverOptions(engine=engine)


@pytest.mark.parametrize("opts", [["bogus=1"], ["aufs.engine"], ["aufs.engine=zfs"],
                                  "aufs.engine=overlay"])
def test_bad_options(opts: list[str]) -> None:
    with pytest.raises(ValueError):
        parse(opts)


def test_init_rejects_bad_option_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        aufs.init(tmp_path / "store", ["nope=1"])
    assert not (tmp_path / "store").exists()


def test_layers_file_is_dockers_format() -> None:
    assert format_chain([]) == b""
    assert format_chain(["p", "gp"]) == b"p\ngp\n"
    assert parse_chain(b"p\ngp\n") == ["p", "gp"]
    assert parse_chain(b"") == []


FIXTURE = (
    "36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
    "100 29 0:60 / /var/lib/aufs/mnt/abc rw,relatime shared:5 master:2 - overlay overlay "
    "rw,lowerdir=/a:/b,upperdir=/u,workdir=/w\n"
    "101 29 0:61 / /tmp/x\\134y rw - fuse.fuse-overlayfs fuse-overlayfs rw,user_id=0\n"
)


def test_mountinfo_parse() -> None:
    first, second, third = mountinfo.parse(FIXTURE)
    assert first.mountpoint == "/mnt/parent dir"
    assert first.optional == ("master:1",)
    assert first.fstype == "ext3" and first.source == "/dev/root"
    assert second.optional == ("shared:5", "master:2")
    assert second.fstype == "overlay" and second.super_options.startswith("rw,lowerdir=")
    assert third.mountpoint == "/tmp/x\\y" and third.optional == ()
    assert third.fstype == "fuse.fuse-overlayfs"


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [("a", Kind.PLAIN, ""), (".wh.a", Kind.WHITEOUT, "a"), (".wh..wh..opq", Kind.OPAQUE, ""),
     (".wh..wh.plnk", Kind.HOUSEKEEPING, ""), (".wh..wh.aufs", Kind.HOUSEKEEPING, ""),
     (".wh..wh.orph", Kind.HOUSEKEEPING, ""), (".wh..hidden", Kind.WHITEOUT, ".hidden"),
     (".whx", Kind.PLAIN, "")],
)
def test_classify_name(name: str, kind: Kind, target: str) -> None:
    entry = classify_name(name)
    assert (entry.kind, entry.target) == (kind, target)


def test_classify_overlay_device() -> None:
    assert classify("a", stat.S_IFCHR, 0).kind is Kind.WHITEOUT
    assert classify("a", stat.S_IFCHR, os.makedev(1, 3)).kind is Kind.PLAIN
    assert classify(".wh..opq", stat.S_IFCHR, 0).kind is Kind.HOUSEKEEPING


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = "c" if stat.S_ISCHR(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            opq = ""
            if kind == "d":
                try:
                    opq = os.getxattr(p, "trusted.overlay.opaque").decode()
                except OSError:
                    opq = ""
            out[str(p.relative_to(root))] = kind + opq
    return out


def test_normalize_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "keep").write_text("x")
    (root / ".wh.gone").touch()
    (root / "d" / ".wh..wh..opq").touch()
    (root / "d" / "sub" / ".wh.f").touch()
    aufs_form = _tree(root)
    assert OVERLAY.normalize(str(root)) == 3
    assert _tree(root) == {"keep": "f", "gone": "c", "d": "dy", "d/sub": "d", "d/sub/f": "c"}
    assert OVERLAY.normalize(str(root)) == 0  # idempotent
    assert AUFS.normalize(str(root)) == 3
    assert _tree(root) == aufs_form
