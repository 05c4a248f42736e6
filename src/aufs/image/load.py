"""``aufs import``: a ``docker save`` tarball or an OCI image layout becomes a layer chain.

Each image layer is stored as the layer whose id is its OCI chain id without ``sha256:``
(chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))), so a
base shared by two images is stored once: a layer that exists is skipped. Every blob read
is checked against its digest (OCI descriptors; docker-save files named by digest), and
every layer's diff id (sha256 of the uncompressed tar) against the config's
``rootfs.diff_ids``. On any failure every layer this import created is removed again.

When the layers are in, the image's config and manifest are kept for the top layer
(:mod:`aufs.store.images`) and its references become names of it: every ``RepoTags``
entry of a ``docker save``, an OCI index's ``org.opencontainers.image.ref.name`` (and
containerd's ``io.containerd.image.name``). ``aufs pull`` hands its images to
:func:`store_image` the same way: an :class:`Image` (layers, config, manifest, names)
and a :class:`~aufs.image.source.Source` of its blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from aufs.archive.compression import open_decompressed
from aufs.driver import Driver
from aufs.errors import ImageError
from aufs.image import names
from aufs.image.oci import (
    CONTAINERD_NAME,
    DOCKER_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    host_arch,
)
from aufs.image.source import Source, open_source
from aufs.store import images, incomplete

DOCKER_SAVE_MANIFEST = "application/x.docker-save.manifest+json"  # ours: a manifest.json entry
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_NAMED_BY_DIGEST = re.compile(r"(?:^|/)(?:blobs/(sha256|sha512)/)?([0-9a-f]{64}|[0-9a-f]{128})"
                              r"(?:\.json)?$")
_CHUNK = 1 << 20
_MAX_JSON = 16 << 20

OnBytes = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class LayerRef:
    name: str                 # the file in the archive
    digest: str | None        # its expected digest (of the bytes as stored), if known
    size: int | None          # its expected size, if known
    diff_id: str              # sha256 of the uncompressed tar, from the config


@dataclass(frozen=True, slots=True)
class Image:
    """An image to store: its layers (bottom first), and what is kept beside them."""

    layers: tuple[LayerRef, ...]
    config: bytes = b""                   # the config JSON as it came ("": keep none)
    manifest: bytes | None = None         # the manifest as it came
    manifest_media_type: str | None = None
    names: tuple[str, ...] = ()           # references that become names of the top layer


# -- public ----------------------------------------------------------------------------

def import_image(driver: Driver, archive: str, *, on_bytes: OnBytes | None = None) -> str:
    """Import the image at ``archive`` into ``driver``'s store; return the top layer id."""
    with open_source(archive) as src:
        image = read_image(src)
        return store_image(driver, src, image, on_bytes=on_bytes)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain ids (``sha256:...``) of layers with these diff ids."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def read_image(src: Source) -> Image:
    if src.has("index.json") and src.has("oci-layout"):
        return _read_oci(src)
    if src.has("manifest.json"):
        return _read_docker(src)
    raise ImageError("not an image: no manifest.json (docker save) "
                     "and no index.json + oci-layout (OCI layout)")


def store_image(driver: Driver, src: Source, image: Image, *,
                on_bytes: OnBytes | None = None) -> str:
    """Store ``image``'s layers read from ``src`` (those not in the store yet), keep its
    config and manifest for the top layer and record its names; return the top layer id.
    Names that are not usable layer names are left out."""
    if not image.layers:
        raise ImageError("the image has no layers")
    chains = chain_ids([layer.diff_id for layer in image.layers])
    created: list[str] = []
    parent = ""
    try:
        for layer, chain in zip(image.layers, chains, strict=True):
            layer_id = chain.removeprefix("sha256:")
            if _claim(driver, layer_id, parent):
                created.append(layer_id)
                _apply(driver, layer_id, src, layer, on_bytes)
                incomplete.clear(driver.layout, layer_id)
            parent = layer_id
    except BaseException:
        for layer_id in reversed(created):
            with contextlib.suppress(Exception):
                driver.remove(layer_id)
            incomplete.clear(driver.layout, layer_id)
        raise
    keep(driver, parent, image)
    return parent


def _claim(driver: Driver, layer_id: str, parent: str) -> bool:
    """Create ``layer_id`` (marked incomplete: ours) unless it is stored whole already;
    a layer a dead import left half-applied is removed and created anew."""
    with driver.locked():
        if driver.exists(layer_id):
            pid = incomplete.owner(driver.layout, layer_id)
            if pid is None:
                return False
            if incomplete.alive(pid):
                raise ImageError(f"layer {layer_id} is being imported by pid {pid}")
            driver.remove(layer_id)
        incomplete.mark(driver.layout, layer_id)
        try:
            driver.create(layer_id, parent)
        except BaseException:
            incomplete.clear(driver.layout, layer_id)
            raise
    return True


def keep(driver: Driver, top: str, image: Image) -> None:
    """Keep ``image``'s config and manifest for the layer ``top`` and make its names
    names of ``top``."""
    with driver.locked():
        if image.config:
            images.write(driver.layout, top, images.ImageMeta(
                image.config, image.manifest, image.manifest_media_type))
        for name in image.names:
            with contextlib.suppress(names.InvalidNameError):
                names.set_name(driver.layout, name, top)


# -- one layer -------------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """A reader that hashes (and counts) every byte read through it."""

    def __init__(self, raw: IO[bytes], algorithm: str, on_bytes: OnBytes | None = None) -> None:
        self._raw = raw
        self.hash = hashlib.new(algorithm)
        self.size = 0
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self.hash.update(data)
        self.size += len(data)
        if self._on_bytes is not None and data:
            self._on_bytes(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self, algorithm: str) -> str:
        return f"{algorithm}:{self.hash.hexdigest()}"


def _apply(driver: Driver, layer_id: str, src: Source, layer: LayerRef,
           on_bytes: OnBytes | None) -> None:
    algorithm = layer.digest.split(":", 1)[0] if layer.digest else "sha256"
    with src.open(layer.name) as raw:
        blob = _Hashing(raw, algorithm, on_bytes)
        _, tar = open_decompressed(blob)  # type: ignore[arg-type]
        diff = _Hashing(tar, "sha256")
        driver.apply_diff(layer_id, "", diff)  # type: ignore[arg-type]
        diff.drain()
        blob.drain()
    if layer.digest is not None and blob.digest(algorithm) != layer.digest:
        raise ImageError(f"layer {layer.name}: digest mismatch (expected {layer.digest}, "
                         f"got {blob.digest(algorithm)})")
    if layer.size is not None and blob.size != layer.size:
        raise ImageError(f"layer {layer.name}: size mismatch (expected {layer.size}, "
                         f"got {blob.size})")
    if diff.digest("sha256") != layer.diff_id:
        raise ImageError(f"layer {layer.name}: diff id mismatch (config says {layer.diff_id}, "
                         f"the tar is {diff.digest('sha256')})")


# -- metadata --------------------------------------------------------------------------

def _read_json(src: Source, name: str, digest: str | None = None,
               size: int | None = None) -> Any:
    return json.loads(_read_raw(src, name, digest, size))


def _read_raw(src: Source, name: str, digest: str | None = None,
              size: int | None = None) -> bytes:
    """The bytes of a JSON document of the archive (checked against ``digest``/``size``
    and parsed once, so that a broken one fails here)."""
    with src.open(name) as f:
        data = f.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise ImageError(f"{name}: too large for a JSON document")
    if digest is not None:
        algorithm, _, expected = digest.partition(":")
        got = hashlib.new(algorithm, data).hexdigest()
        if got != expected:
            raise ImageError(f"{name}: digest mismatch (expected {digest}, "
                             f"got {algorithm}:{got})")
    if size is not None and len(data) != size:
        raise ImageError(f"{name}: size mismatch (expected {size}, got {len(data)})")
    try:
        json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{name}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ImageError(f"{name}: JSON nested too deeply") from None
    return data


def _digest(desc: Any, where: str) -> str:
    digest = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"{where}: missing or unsupported digest {digest!r}")
    return digest


def _size(desc: dict[str, Any]) -> int | None:
    size = desc.get("size")
    return size if isinstance(size, int) and size >= 0 else None


def blob_path(digest: str) -> str:
    """Where an OCI image layout keeps the blob of ``digest``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def _diff_ids(config: Any, where: str) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(
            isinstance(i, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", i) for i in ids):
        raise ImageError(f"{where}: no valid rootfs.diff_ids")
    return list(ids)


def _pick(manifests: list[Any], where: str) -> dict[str, Any]:
    """The manifest for this host from an index (the only one, if there is one)."""
    candidates = [m for m in manifests if isinstance(m, dict)]
    if not candidates:
        raise ImageError(f"{where}: lists no manifest")
    if len(candidates) == 1:
        return candidates[0]
    for m in candidates:
        plat = m.get("platform")
        if isinstance(plat, dict) and plat.get("os") == "linux" and \
                plat.get("architecture") == host_arch():
            return m
    return candidates[0]


def _read_oci(src: Source) -> Image:
    layout = _read_json(src, "oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImageError("oci-layout: no imageLayoutVersion")
    index = _read_json(src, "index.json")
    desc = _pick(index.get("manifests", []) if isinstance(index, dict) else [], "index.json")
    refs = _ref_names(desc)
    for _ in range(8):  # nested indexes (multi-platform images)
        if desc.get("mediaType") not in (OCI_INDEX, DOCKER_LIST):
            break
        digest = _digest(desc, "index.json")
        nested = _read_json(src, blob_path(digest), digest, _size(desc))
        desc = _pick(nested.get("manifests", []) if isinstance(nested, dict) else [], digest)
    digest = _digest(desc, "index.json")
    raw_manifest = _read_raw(src, blob_path(digest), digest, _size(desc))
    manifest = json.loads(raw_manifest)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise ImageError(f"manifest {digest}: no layers list")
    config_desc = manifest.get("config")
    config_digest = _digest(config_desc, f"manifest {digest} config")
    assert isinstance(config_desc, dict)
    raw_config = _read_raw(src, blob_path(config_digest), config_digest, _size(config_desc))
    diff_ids = _diff_ids(json.loads(raw_config), f"config {config_digest}")
    layers = manifest["layers"]
    if len(layers) != len(diff_ids):
        raise ImageError(f"manifest {digest} has {len(layers)} layers, its config "
                         f"{len(diff_ids)} diff ids")
    layer_refs = []
    for i, (ld, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        ldigest = _digest(ld, f"manifest {digest} layer {i}")
        layer_refs.append(LayerRef(blob_path(ldigest), ldigest, _size(ld), diff_id))
    media_type = manifest.get("mediaType") or desc.get("mediaType") or OCI_MANIFEST
    return Image(tuple(layer_refs), raw_config, raw_manifest,
                 media_type if isinstance(media_type, str) else OCI_MANIFEST, refs)


def _ref_names(desc: dict[str, Any]) -> tuple[str, ...]:
    """The references an OCI index gives a manifest (containerd's full name first)."""
    notes = desc.get("annotations")
    if not isinstance(notes, dict):
        return ()
    found = [notes.get(CONTAINERD_NAME), notes.get(REF_NAME)]
    return tuple(dict.fromkeys(n for n in found if isinstance(n, str) and n))


def _named_digest(name: str) -> str | None:
    """The digest a docker-save file's name states, if it is named by one."""
    m = _NAMED_BY_DIGEST.search(name)
    if m is None or (m.group(1) is None and not name.endswith(".json")):
        return None  # <v1 id>/layer.tar: an id, not a digest of the file
    algorithm = m.group(1) or "sha256"
    return f"{algorithm}:{m.group(2)}"


def _read_docker(src: Source) -> Image:
    manifest = _read_json(src, "manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise ImageError("manifest.json: not a list of images")
    if len(manifest) > 1:
        raise ImageError(f"the archive holds {len(manifest)} images; "
                         "save and import one image at a time")
    entry = manifest[0]
    config_name, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layers, list) or not all(
            isinstance(x, str) for x in layers):
        raise ImageError("manifest.json: needs Config and Layers")
    raw_config = _read_raw(src, config_name, _named_digest(config_name))
    diff_ids = _diff_ids(json.loads(raw_config), config_name)
    if len(layers) != len(diff_ids):
        raise ImageError(f"manifest.json lists {len(layers)} layers, the config "
                         f"{len(diff_ids)} diff ids")
    tags = entry.get("RepoTags")
    refs = tuple(t for t in tags if isinstance(t, str) and t) if isinstance(tags, list) else ()
    return Image(tuple(LayerRef(name, _named_digest(name), None, diff_id)
                       for name, diff_id in zip(layers, diff_ids, strict=True)),
                 raw_config, json.dumps(entry).encode(), DOCKER_SAVE_MANIFEST, refs)
