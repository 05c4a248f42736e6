"""``aufs export ID -o FILE``: the chain base..ID as an image tar, OCI layout or docker-archive.

:func:`image_blobs` turns the chain into blobs — each layer's tar (compressed as asked,
into a scratch directory), the image config and an OCI manifest — and is shared by
``export`` and ``push``; an OCI export writes each layer blob straight into its entry of
the archive instead (:class:`_OciArchive`), the diff id and the blob digest hashed in the
same pass. The config is the one the image came in with
(:mod:`aufs.store.images`, :mod:`aufs.image.config`): unchanged when the chain is that
image, else extended by the layers made here. Each layer's tar is rebuilt byte for byte
from its tar-split when it has one and is unchanged (:mod:`aufs.archive.tarsplit`), so the
diff ids match the ones the image came with; otherwise it is generated from the layer.

Formats:

- ``oci`` (default): ``oci-layout``, ``blobs/sha256/``, ``index.json`` (one manifest, its
  reference in ``org.opencontainers.image.ref.name``), in that order; layers gzip by
  default.
- ``docker-archive``: what ``docker save`` (before Docker 25) writes and ``docker load`` /
  ``podman load`` read: ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``), the
  config as ``<hex>.json``, each layer as ``<hex>/layer.tar``; uncompressed by default.

Compressed blobs are deterministic (gzip: a member per 1 MiB block, each with no name and
mtime 0; :mod:`aufs.archive.compressor`). The tar is written under a
temporary name beside ``FILE`` and renamed to ``FILE`` when whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, NamedTuple, Protocol

from aufs._sys.files import rmtree
from aufs.archive import compressor, tarsplit
from aufs.driver import Driver
from aufs.errors import ImageError
from aufs.image.config import Added, image_config, minimal_config
from aufs.image.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    REF_NAME,
    host_arch,
)
from aufs.store import images

LAYER_MEDIA_TYPES = {"none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}
FORMATS = ("oci", "docker-archive")
COMPRESSIONS = ("gzip", "zstd", "none")
DEFAULT_COMPRESSION = {"oci": "gzip", "docker-archive": "none"}
_CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE

OnBytes = Callable[[int], None]


class Blob(NamedTuple):  # a NamedTuple: dataclasses (with inspect) cost an export 5 ms
    digest: str
    size: int
    path: str | None = None     # on disk, or
    data: bytes | None = None   # in memory

    def descriptor(self, media_type: str, **extra: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.digest, "size": self.size, **extra}

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


def _memory_blob(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)


class _HashingWriter:
    """Writes into ``out`` and hashes what it writes (the compressed blob's digest)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._out.write(data)
        self.hash.update(data)  # releases the GIL on a block: the workers go on
        self.size += n
        return n


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Target(Protocol):
    """Where layer blobs go: ``begin`` gives the file to write one into (at its current
    position), ``end`` makes what was written the blob ``digest``, ``abort`` drops it."""

    def begin(self, index: int) -> IO[bytes]: ...

    def end(self, digest: str, size: int) -> Blob: ...

    def abort(self) -> None: ...


class _ScratchFiles:
    """Each layer blob a file ``layer<i>`` in the directory ``scratch`` (push uploads them)."""

    def __init__(self, scratch: str) -> None:
        self._scratch = scratch
        self._file: IO[bytes] | None = None
        self._path = ""

    def begin(self, index: int) -> IO[bytes]:
        self._path = os.path.join(self._scratch, f"layer{index}")
        self._file = open(self._path, "xb")  # noqa: SIM115 (closed by end/abort)
        return self._file

    def end(self, digest: str, size: int) -> Blob:
        assert self._file is not None
        self._file.close()
        self._file = None
        return Blob(digest, size, path=self._path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


class _OtherBytes(Exception):
    """The rebuilt tar is not the one recorded (its diff id differs)."""


def _write_layer(stream: _Readable, target: _Target, index: int, compress: str,
                 on_bytes: OnBytes | None, expect: str | None = None) -> tuple[Blob, str]:
    """Write the tar ``stream`` (compressed) as the blob of layer ``index`` into
    ``target``: the blob and the tar's diff id. On an error — or, with ``expect``, a
    diff id other than that (:class:`_OtherBytes`) — the blob is dropped."""
    diff_id = hashlib.sha256()
    sink = _HashingWriter(target.begin(index))
    try:
        # the diff id is hashed as the compressor takes the bytes (gzip: a block at a
        # time, in the calling thread, while the workers deflate the blocks before it)
        out = compressor.open_compressor(sink, compress,  # type: ignore[arg-type]
                                         tee=diff_id.update)
        try:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        finally:
            out.close()
        tar_digest = "sha256:" + diff_id.hexdigest()
        if expect is not None and tar_digest != expect:
            raise _OtherBytes(tar_digest)
        blob = target.end("sha256:" + sink.hash.hexdigest(), sink.size)
    except BaseException:
        target.abort()
        raise
    return blob, tar_digest


def _layer_blob(driver: Driver, layer_id: str, target: _Target, index: int, compress: str,
                on_bytes: OnBytes | None) -> tuple[Blob, str]:
    """The layer's tar as a blob in ``target`` and its diff id: rebuilt from its
    tar-split when that gives the tar it came as (its sha256 is checked), else
    generated from the layer."""
    layout = driver.layout
    try:
        with tarsplit.open_rebuilt(layout.tar_split(layer_id), layout.diff(layer_id)) as tar:
            return _write_layer(tar, target, index, compress, on_bytes, expect=tar.diff_id)
    except (tarsplit.Unusable, _OtherBytes):
        pass  # the blob written so far was dropped
    with driver.diff(layer_id) as stream:
        return _write_layer(stream, target, index, compress, on_bytes)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class ImageBlobs(NamedTuple):
    """An image as blobs: its layers (compressed, on disk), config and manifest."""

    layers: list[Blob]
    diff_ids: list[str]
    config: Blob
    manifest: Blob
    layer_media_type: str = OCI_LAYER_GZIP
    manifest_media_type: str = OCI_MANIFEST
    config_media_type: str = OCI_CONFIG


def _created(driver: Driver, layer_id: str) -> str | None:
    """When the layer was made (its ``layers/<id>`` file), RFC 3339 UTC."""
    try:
        mtime = os.stat(driver.layout.layers(layer_id)).st_mtime
    except OSError:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))


def chain_config(driver: Driver, chain: list[str], diff_ids: list[str]) -> bytes:
    """The config of the image ``chain`` (bottom first) with these diff ids."""
    found = images.nearest(driver.layout, list(reversed(chain)))
    if found is None:
        return minimal_config(diff_ids, chain, host_arch())
    from_top, meta = found
    depth = len(chain) - from_top
    added = [Added(lid, _created(driver, lid)) for lid in chain[depth:]]
    return image_config(meta.config, depth, diff_ids, added)


def image_blobs(driver: Driver, layer_id: str, scratch: str, *, compress: str = "gzip",
                on_bytes: OnBytes | None = None) -> ImageBlobs:
    """The image whose top layer is ``layer_id`` as blobs; layer blobs are written into
    the directory ``scratch`` (the caller removes it). ``export`` and ``push`` share this."""
    return _image_blobs(driver, layer_id, _ScratchFiles(scratch), compress, on_bytes)


def _image_blobs(driver: Driver, layer_id: str, target: _Target, compress: str,
                 on_bytes: OnBytes | None) -> ImageBlobs:
    if compress not in LAYER_MEDIA_TYPES:
        raise ValueError(f"unknown compression {compress!r} (use gzip, zstd or none)")
    chain = [*reversed(driver.parents(layer_id)), layer_id]
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for i, lid in enumerate(chain):
        blob, diff_id = _layer_blob(driver, lid, target, i, compress, on_bytes)
        layers.append(blob)
        diff_ids.append(diff_id)
    config = _memory_blob(chain_config(driver, chain, diff_ids))
    media_type = LAYER_MEDIA_TYPES[compress]
    manifest = _memory_blob(_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(OCI_CONFIG),
        "layers": [b.descriptor(media_type) for b in layers],
    }))
    return ImageBlobs(layers, diff_ids, config, manifest, media_type)


def export_image(driver: Driver, layer_id: str, output: str, *, format: str = "oci",
                 tag: str | None = None, compress: str | None = None,
                 on_bytes: OnBytes | None = None) -> str:
    """Write the image whose top layer is ``layer_id`` to ``output`` in ``format``;
    return its manifest digest. ``tag``: its reference (``repo:tag``; OCI default
    ``latest``, docker-archive default none)."""
    if format not in FORMATS:
        raise ImageError(f"unknown image format {format!r} (use oci or docker-archive)")
    compress = compress or DEFAULT_COMPRESSION[format]
    out_dir = os.path.dirname(os.path.abspath(output))
    scratch = tempfile.mkdtemp(prefix=".aufs-export-", dir=out_dir)
    try:
        tmp = os.path.join(scratch, "image.tar")
        if format == "oci":
            with open(tmp, "xb") as f:
                archive = _OciArchive(f)
                image = _image_blobs(driver, layer_id, archive, compress, on_bytes)
                archive.finish(image, tag or "latest")
        else:
            image = _image_blobs(driver, layer_id, _ScratchFiles(scratch), compress, on_bytes)
            _write_docker_archive(tmp, image, tag)
        os.replace(tmp, output)
    finally:
        with contextlib.suppress(OSError):
            rmtree(scratch)
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


def _add(tar: tarfile.TarFile, name: str, blob: Blob) -> None:
    if blob.data is not None:
        tar.addfile(_info(name, blob.size), io.BytesIO(blob.data))
        return
    assert blob.path is not None
    with open(blob.path, "rb") as f:
        tar.addfile(_info(name, blob.size), f)


class _OciArchive:
    """An OCI image layout tar written front to back, each layer blob straight into its
    entry (no scratch file copied in afterwards): ``oci-layout`` and the ``blobs/``
    directories first, then for each layer a header block whose name and size are
    written once the blob is whole (:meth:`end`), the config and manifest, and
    ``index.json`` last (it names the manifest's digest). Readers take the entries in
    any order (skopeo and umoci unpack the layout; containerd's import collects them)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._start = 0
        self._seen: set[str] = set()
        self._add("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        self._add("blobs", b"", tarfile.DIRTYPE)
        self._add("blobs/sha256", b"", tarfile.DIRTYPE)

    def _add(self, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
        self._f.write(_header(name, len(data), kind) + data + bytes(-len(data) % BLOCK))

    def begin(self, index: int) -> IO[bytes]:
        self._start = self._f.tell()
        self._f.write(bytes(BLOCK))  # the header, once the name and size are known
        return self._f

    def end(self, digest: str, size: int) -> Blob:
        blob = Blob(digest, size)
        if digest in self._seen:  # two identical layers: one blob
            self.abort()
            return blob
        self._seen.add(digest)
        f = self._f
        f.write(bytes(-size % BLOCK))
        end = f.tell()
        f.seek(self._start)
        f.write(_header("blobs/sha256/" + blob.hex, size))
        f.seek(end)
        return blob

    def abort(self) -> None:
        self._f.seek(self._start)
        self._f.truncate()

    def finish(self, image: ImageBlobs, tag: str) -> None:
        """The config, the manifest, ``index.json`` and the end of the archive."""
        for blob in (image.config, image.manifest):
            if blob.digest not in self._seen:
                self._seen.add(blob.digest)
                assert blob.data is not None
                self._add("blobs/sha256/" + blob.hex, blob.data)
        self._add("index.json", _json({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [image.manifest.descriptor(OCI_MANIFEST,
                                                    annotations={REF_NAME: tag})],
        }))
        end = self._f.tell() + 2 * BLOCK  # two zero blocks, padded to a record, as tarfile
        self._f.write(bytes(2 * BLOCK + -end % tarfile.RECORDSIZE))


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One 512-byte header block (a blob of 8 GiB or more: its size in GNU base-256)."""
    info = _info(name, size, kind)
    buf = info.tobuf(tarfile.PAX_FORMAT)
    if len(buf) != BLOCK:  # the size does not fit in 11 octal digits
        buf = info.tobuf(tarfile.GNU_FORMAT)
    assert len(buf) == BLOCK, name
    return buf


def _write_docker_archive(path: str, image: ImageBlobs, tag: str | None) -> None:
    config_name = image.config.hex + ".json"
    layer_names = [f"{blob.hex}/layer.tar" for blob in image.layers]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag] if tag else [],
                            "Layers": layer_names}]).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        seen: set[str] = set()
        for blob, name in zip(image.layers, layer_names, strict=True):
            if blob.digest in seen:
                continue
            seen.add(blob.digest)
            tar.addfile(_info(blob.hex, 0, tarfile.DIRTYPE))
            _add(tar, name, blob)
        _add(tar, config_name, image.config)
        tar.addfile(_info("manifest.json", len(manifest)), io.BytesIO(manifest))
