"""The config an export writes (aufs.image.config), the export reference
(aufs.image.names.reference) and the image documents a store keeps (aufs.store.images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aufs.image import ImageError
from aufs.image.config import Added, image_config, minimal_config
from aufs.image.names import reference
from aufs.store import images
from aufs.store.layout import Layout

A, B, C = ("sha256:" + c * 64 for c in "abc")
BASE = json.dumps({  # key order and spacing of its own: kept byte for byte when unchanged
    "os": "linux", "architecture": "amd64", "created": "2020-01-01T00:00:00Z",
    "config": {"Cmd": ["sh"], "Env": ["A=1"], "WorkingDir": "/srv", "Labels": {"x": "y"}},
    "rootfs": {"type": "layers", "diff_ids": [A, B]},
    "history": [{"created_by": "one"}, {"created_by": "two"}],
}, indent=3).encode()


def test_an_unchanged_image_keeps_its_config_byte_for_byte() -> None:
    assert image_config(BASE, 2, [A, B], []) == BASE


@pytest.mark.parametrize(("diff_ids", "added", "history", "created"), [
    ([A, C], [], ["one", "two"], "2020-01-01T00:00:00Z"),  # a layer regenerated
    ([A, B, C], [Added("top", "2026-12-04T10:00:00Z")], ["one", "two", "aufs layer top"],
     "2026-12-04T10:00:00Z"),
    ([A, B, C, A], [Added("t1", "2026-01-01T00:00:00Z"), Added("t2", None)],
     ["one", "two", "aufs layer t1", "aufs layer t2"], "2026-01-01T00:00:00Z"),
])
def test_a_changed_or_extended_image_gets_its_base_config(
        diff_ids: list[str], added: list[Added], history: list[str], created: str) -> None:
    doc = json.loads(image_config(BASE, 2, diff_ids, added))
    assert doc["config"] == json.loads(BASE)["config"]
    assert doc["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert [h["created_by"] for h in doc["history"]] == history
    assert doc["created"] == created


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="cover"):
        image_config(BASE, 2, [A], [])
    with pytest.raises(ImageError, match="not valid JSON"):
        image_config(b"{", 1, [A], [])


def test_minimal_config() -> None:
    doc = json.loads(minimal_config([A], ["l0"], "amd64"))
    assert doc["rootfs"]["diff_ids"] == [A] and doc["config"] == {}
    assert doc["history"] == [{"created_by": "aufs layer l0"}]


@pytest.mark.parametrize(("names", "ref"), [
    ([], None),
    (["app"], "app"),
    (["app", "interop:3"], "interop:3"),
    (["a", "localhost:5000/x/y@sha256:" + "0" * 64], "localhost:5000/x/y@sha256:" + "0" * 64),
    (["a", "b"], "a"),
])
def test_export_reference(names: list[str], ref: str | None) -> None:
    assert reference(names) == ref


def test_store_keeps_image_documents(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    assert images.read(layout, "top") is None
    odd = BASE + b"\xff\xfe"  # not UTF-8: kept all the same
    meta = images.ImageMeta(odd, b'{"m": 1}', "application/x")
    images.write(layout, "top", meta)
    assert images.read(layout, "top") == meta
    assert images.nearest(layout, ["local", "top", "base"]) == (1, meta)
    assert images.nearest(layout, ["base"]) is None
    Path(layout.tar_split("top")).parent.mkdir(parents=True)
    Path(layout.tar_split("top")).write_bytes(b"x")
    images.forget(layout, "top")
    assert images.read(layout, "top") is None
    assert not Path(layout.tar_split("top")).exists()
    Path(layout.image("bad")).write_text("[1]")  # damaged: no image
    assert images.read(layout, "bad") is None
