"""``export`` as an OCI archive written front to back: each layer blob goes straight into
its tar entry (header written when the blob is whole), identical layers share one entry,
a rebuild that gives other bytes is cut off and generated again, ``index.json`` last;
every digest checks, every gzip blob passes ``gzip -t``, skopeo copies the archive."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import aufs
from aufs.archive.compressor import BLOCK
from aufs.image import oci, save


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_500_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read(archive: Path) -> tuple[list[str], dict[str, bytes]]:
    """The entry names in order, and every blob's bytes by digest (each checked)."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        blobs = {}
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                f = tar.extractfile(m)
                assert f is not None
                data = f.read()
                digest = "sha256:" + m.name.removeprefix("blobs/sha256/")
                assert _sha(data) == digest, m.name
                blobs[digest] = data
        index = tar.extractfile("index.json")
        assert index is not None
        assert json.load(index)["manifests"][0]["digest"] in blobs
    return names, blobs


@pytest.fixture
def store(overlay_driver: aufs.Driver) -> aufs.Driver:
    """base (applied: it has a tar-split, and more than two gzip blocks of data), two
    empty layers on it (the same tar, the same blob), and top."""
    d = overlay_driver
    big = os.urandom(BLOCK) + b"text\n" * (BLOCK // 4)
    d.create("base")
    d.apply_diff("base", "", io.BytesIO(_tar({"big": big, "etc/motd": b"hi\n"})))
    d.create("e1", "base")
    d.create("e2", "e1")
    d.create("top", "e2")
    d.apply_diff("top", "e2", io.BytesIO(_tar({"etc/motd": b"top\n"})))
    return d


def test_oci_archive_is_written_front_to_back(store: aufs.Driver, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    save.export_image(store, "top", str(out), tag="v1")
    names, blobs = _read(out)
    assert names[:3] == ["oci-layout", "blobs", "blobs/sha256"]
    assert names[-1] == "index.json"
    assert len(names) == 3 + 3 + 2 + 1  # base, one blob for both empty layers, top
    manifest = json.loads(next(b for b in blobs.values() if b.startswith(b'{"config"')))
    layers = [blobs[x["digest"]] for x in manifest["layers"]]
    assert manifest["layers"][1]["digest"] == manifest["layers"][2]["digest"]
    config = json.loads(blobs[manifest["config"]["digest"]])
    diff_ids = config["rootfs"]["diff_ids"]
    for blob, diff_id, desc in zip(layers, diff_ids, manifest["layers"], strict=True):
        assert desc["mediaType"] == oci.OCI_LAYER_GZIP and desc["size"] == len(blob)
        assert _sha(gzip.decompress(blob)) == diff_id
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layers[0]))) as tar:
        assert sorted(tar.getnames()) == ["big", "etc/motd"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".aufs-export-")]
    (tmp_path / "base.gz").write_bytes(layers[0])
    subprocess.run(["gzip", "-t", str(tmp_path / "base.gz")], check=True)
    if shutil.which("skopeo"):  # reads the members as one stream and checks every digest
        subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{out}:v1",
                        f"dir:{tmp_path / 'copied'}"], check=True, timeout=120,
                       capture_output=True)
        assert (tmp_path / "copied" / manifest["layers"][0]["digest"].split(":")[1]).exists()


def test_a_rebuild_with_other_bytes_is_cut_off(store: aufs.Driver, tmp_path: Path) -> None:
    """The tar-split's diff id made wrong: the rebuilt blob is written into the archive,
    found to be other bytes, cut off, and the layer's tar generated in its place."""
    good = tmp_path / "good.tar"
    save.export_image(store, "base", str(good), compress="none")
    _, before = _read(good)
    split = Path(store.layout.tar_split("base"))
    raw = split.read_bytes()
    header = json.loads(raw[:512].split(b"\n", 1)[1])
    wrong = raw.replace(header["diff_id"].encode(), _sha(b"other").encode())
    assert wrong != raw
    split.write_bytes(wrong)
    out = tmp_path / "image.tar"
    save.export_image(store, "base", str(out), compress="none")
    names, blobs = _read(out)
    assert len(names) == 3 + 3 + 1
    (layer,) = (b for b in blobs.values() if b[257:262] == b"ustar")
    assert _sha(layer) != header["diff_id"]  # generated, not the recorded tar ...
    assert _sha(layer) not in before and header["diff_id"] in before  # ... used before
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert sorted(tar.getnames()) == ["big", "etc", "etc/motd"]


@pytest.mark.parametrize("size", [0, 1, (8 << 30) - 1, 8 << 30, 1 << 40])
def test_a_blob_header_is_one_block(size: int) -> None:
    name = "blobs/sha256/" + "a" * 64
    buf = save._header(name, size)
    assert len(buf) == 512
    info = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
    assert (info.name, info.size, info.mtime, info.uid) == (name, size, 0, 0)
