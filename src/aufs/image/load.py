"""``aufs import``: a ``docker save`` tarball or an OCI image layout becomes a layer chain.

Each image layer is stored as the layer whose id is its OCI chain id without ``sha256:``
(chainID(L0) = diffID(L0); chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))), so a
base shared by two images is stored once: a layer that exists is skipped. Every blob read
is checked against its digest (OCI descriptors; docker-save files named by digest), and
every layer's diff id (sha256 of the uncompressed tar) against the config's
``rootfs.diff_ids``. On any failure every layer this import created is removed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from aufs.archive.compression import open_decompressed
from aufs.driver import Driver
from aufs.image import ImageError
from aufs.image.source import Source, open_source

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
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
    layers: tuple[LayerRef, ...]


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
    if not image.layers:
        raise ImageError("the image has no layers")
    chains = chain_ids([layer.diff_id for layer in image.layers])
    created: list[str] = []
    parent = ""
    try:
        for layer, chain in zip(image.layers, chains, strict=True):
            layer_id = chain.removeprefix("sha256:")
            if not driver.exists(layer_id):
                driver.create(layer_id, parent)
                created.append(layer_id)
                _apply(driver, layer_id, src, layer, on_bytes)
            parent = layer_id
    except BaseException:
        for layer_id in reversed(created):
            with contextlib.suppress(Exception):
                driver.remove(layer_id)
        raise
    return parent


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
        return json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{name}: not valid JSON ({exc})") from exc


def _digest(desc: Any, where: str) -> str:
    digest = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(f"{where}: missing or unsupported digest {digest!r}")
    return digest


def _size(desc: dict[str, Any]) -> int | None:
    size = desc.get("size")
    return size if isinstance(size, int) and size >= 0 else None


def _blob(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def _diff_ids(config: Any, where: str) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(
            isinstance(i, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", i) for i in ids):
        raise ImageError(f"{where}: no valid rootfs.diff_ids")
    return list(ids)


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


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
    for _ in range(8):  # nested indexes (multi-platform images)
        if desc.get("mediaType") not in (OCI_INDEX, DOCKER_LIST):
            break
        digest = _digest(desc, "index.json")
        nested = _read_json(src, _blob(digest), digest, _size(desc))
        desc = _pick(nested.get("manifests", []) if isinstance(nested, dict) else [], digest)
    digest = _digest(desc, "index.json")
    manifest = _read_json(src, _blob(digest), digest, _size(desc))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise ImageError(f"manifest {digest}: no layers list")
    config_desc = manifest.get("config")
    config_digest = _digest(config_desc, f"manifest {digest} config")
    assert isinstance(config_desc, dict)
    config = _read_json(src, _blob(config_digest), config_digest, _size(config_desc))
    diff_ids = _diff_ids(config, f"config {config_digest}")
    layers = manifest["layers"]
    if len(layers) != len(diff_ids):
        raise ImageError(f"manifest {digest} has {len(layers)} layers, its config "
                         f"{len(diff_ids)} diff ids")
    refs = []
    for i, (ld, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        ldigest = _digest(ld, f"manifest {digest} layer {i}")
        refs.append(LayerRef(_blob(ldigest), ldigest, _size(ld), diff_id))
    return Image(tuple(refs))


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
    config = _read_json(src, config_name, _named_digest(config_name))
    diff_ids = _diff_ids(config, config_name)
    if len(layers) != len(diff_ids):
        raise ImageError(f"manifest.json lists {len(layers)} layers, the config "
                         f"{len(diff_ids)} diff ids")
    return Image(tuple(LayerRef(name, _named_digest(name), None, diff_id)
                       for name, diff_id in zip(layers, diff_ids, strict=True)))
