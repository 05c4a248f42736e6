"""``aufs export ID -o FILE``: the chain base..ID as an OCI image layout tar.

The tar holds ``oci-layout``, ``index.json`` (one manifest, tagged with
``org.opencontainers.image.ref.name``) and ``blobs/sha256/``: gzip layers (deterministic:
no name, mtime 0), an image config with ``rootfs.diff_ids`` and the host's architecture,
and the manifest. Layers are compressed into a scratch directory beside ``FILE``; the tar
is written under a temporary name and renamed to ``FILE`` when whole.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from aufs.driver import Driver
from aufs.image.load import OCI_INDEX, host_arch

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20

OnBytes = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Blob:
    digest: str
    size: int
    path: str | None = None     # on disk, or
    data: bytes | None = None   # in memory

    def descriptor(self, media_type: str, **extra: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.digest, "size": self.size, **extra}


def _memory_blob(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)


class _HashingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = bytes(data)
        self._out.write(view)
        self.hash.update(view)
        self.size += len(view)
        return len(view)


def _layer_blob(driver: Driver, layer_id: str, path: str,
                on_bytes: OnBytes | None) -> tuple[Blob, str]:
    """Gzip the layer's diff into ``path``: its blob and its diff id."""
    diff_id = hashlib.sha256()
    with open(path, "xb") as f:
        sink = _HashingWriter(f)
        with driver.diff(layer_id) as stream, \
                gzip.GzipFile(filename="", fileobj=sink, mode="wb", mtime=0) as gz:
            while chunk := stream.read(_CHUNK):
                diff_id.update(chunk)
                gz.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
    blob = Blob("sha256:" + sink.hash.hexdigest(), sink.size, path=path)
    return blob, "sha256:" + diff_id.hexdigest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class ImageBlobs:
    """An image as blobs: its layers (compressed, on disk), config and manifest."""

    layers: list[Blob]
    diff_ids: list[str]
    config: Blob
    manifest: Blob
    layer_media_type: str = OCI_LAYER_GZIP
    manifest_media_type: str = OCI_MANIFEST


def image_blobs(driver: Driver, layer_id: str, scratch: str, *,
                on_bytes: OnBytes | None = None) -> ImageBlobs:
    """The image whose top layer is ``layer_id`` as blobs; layer blobs are written into
    the directory ``scratch`` (the caller removes it). ``export`` and ``push`` share this."""
    chain = [*reversed(driver.parents(layer_id)), layer_id]
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for i, lid in enumerate(chain):
        blob, diff_id = _layer_blob(driver, lid, os.path.join(scratch, f"layer{i}"),
                                    on_bytes)
        layers.append(blob)
        diff_ids.append(diff_id)
    config = _memory_blob(_json({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"aufs layer {lid}"} for lid in chain],
    }))
    manifest = _memory_blob(_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(OCI_CONFIG),
        "layers": [b.descriptor(OCI_LAYER_GZIP) for b in layers],
    }))
    return ImageBlobs(layers, diff_ids, config, manifest)


def export_image(driver: Driver, layer_id: str, output: str, *, tag: str = "latest",
                 on_bytes: OnBytes | None = None) -> str:
    """Write the image whose top layer is ``layer_id`` to ``output``; return the
    manifest digest."""
    out_dir = os.path.dirname(os.path.abspath(output))
    scratch = tempfile.mkdtemp(prefix=".aufs-export-", dir=out_dir)
    try:
        image = image_blobs(driver, layer_id, scratch, on_bytes=on_bytes)
        index = _json({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [image.manifest.descriptor(OCI_MANIFEST,
                                                    annotations={REF_NAME: tag})],
        })
        tmp = os.path.join(scratch, "image.tar")
        _write_tar(tmp, index, [*image.layers, image.config, image.manifest])
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    return image.manifest.digest


def _info(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(path: str, index: bytes, blobs: list[Blob]) -> None:
    layout = _json({"imageLayoutVersion": "1.0.0"})
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("oci-layout", len(layout)), io.BytesIO(layout))
        tar.addfile(_info("index.json", len(index)), io.BytesIO(index))
        tar.addfile(_info("blobs", 0, tarfile.DIRTYPE))
        tar.addfile(_info("blobs/sha256", 0, tarfile.DIRTYPE))
        seen: set[str] = set()
        for blob in blobs:
            if blob.digest in seen:
                continue  # two identical layers: one blob
            seen.add(blob.digest)
            name = "blobs/sha256/" + blob.digest.removeprefix("sha256:")
            if blob.data is not None:
                tar.addfile(_info(name, blob.size), io.BytesIO(blob.data))
            else:
                assert blob.path is not None
                with open(blob.path, "rb") as f:
                    tar.addfile(_info(name, blob.size), f)
