"""``aufs pull REF``: an image from a registry into the store, each layer extracted once.

The manifest (through an index, for this host's platform or ``--platform``) and the
config come first; the config's diff ids give each layer's chain id, which is its id in
the store, so layers the store has are neither downloaded nor extracted. The others are
downloaded, several at a time, into a staging directory under the store
(``.aufs/staging/pull-…-<pid>``) laid out as an OCI image layout, each checked against
its digest and size as it arrives, and the layout goes through the same import path as
``aufs import`` (:func:`aufs.image.load.read_image` / ``store_image``): a layer is
extracted as soon as its blob is whole, while later ones still download. On any failure
the layers this pull created are removed and the staging directory goes with it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from typing import IO

from aufs._sys.files import rmtree
from aufs.driver import Driver
from aufs.image import load, oci
from aufs.image.source import DirSource
from aufs.registry import RegistryError, blobinfo, manifest
from aufs.registry.client import Cancelled, Repository
from aufs.registry.events import Events
from aufs.registry.reference import Reference
from aufs.store import incomplete
from aufs.store.staging import name as staging_name

PARALLEL = 3                   # downloads at a time (Docker's default is 3)


@dataclass(frozen=True, slots=True)
class Pulled:
    top: str                   # the top layer's id
    digest: str                # the manifest's digest
    layers: int
    fetched: int               # how many layer blobs were downloaded


class _Downloading:
    """A :class:`~aufs.image.source.Source` over the staging layout whose layer blobs may
    still be arriving: opening one waits for its download (and raises what it raised)."""

    def __init__(self, root: str, pending: dict[str, cf.Future[None]]) -> None:
        self._dir = DirSource(root)
        self._pending = pending

    def has(self, name: str) -> bool:
        return name in self._pending or self._dir.has(name)

    def open(self, name: str) -> IO[bytes]:
        future = self._pending.get(name)
        if future is not None:
            future.result()
        return self._dir.open(name)


def resolve(repo: Repository, ref: Reference, want: manifest.Platform
            ) -> tuple[manifest.Manifest, bytes, str]:
    """The image manifest ``ref`` names for ``want``: parsed, its bytes and digest."""
    where = f"{repo.name}: manifest {ref.object}"
    data, kind = repo.manifest(ref.object)
    digest = blobinfo.digest_of(data, ref.digest.split(":")[0] if ref.digest else "sha256")
    if ref.digest is not None and digest != ref.digest:
        raise RegistryError(f"{where}: digest mismatch (got {digest})")
    doc = manifest.parse(data, kind, where)
    for _ in range(4):  # an index may point to another index
        if isinstance(doc, manifest.Manifest):
            return doc, data, digest
        desc = manifest.choose(doc, want, where)
        where = f"{repo.name}: manifest {desc.digest}"
        data, kind = repo.manifest(desc.digest)
        got = blobinfo.digest_of(data, desc.digest.split(":")[0])
        if got != desc.digest or len(data) != desc.size:
            raise RegistryError(f"{where}: digest or size mismatch (got {got}, "
                                f"{len(data)} bytes; the index says {desc.size})")
        doc, digest = manifest.parse(data, kind, where), desc.digest
        if doc.media_type != desc.media_type:
            raise RegistryError(f"{where}: the index says {desc.media_type}, "
                                f"the registry served {doc.media_type}")
    raise RegistryError(f"{where}: indexes nested too deep")


def _diff_ids(config: bytes, where: str) -> list[str]:
    try:
        doc = json.loads(config)
        ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{where}: no rootfs.diff_ids") from exc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RegistryError(f"{where}: rootfs.diff_ids is not a list of digests")
    return ids


def pull(driver: Driver, ref: Reference, *, platform: manifest.Platform | None = None,
         insecure: bool = False, events: Events | None = None) -> Pulled:
    events = events or Events()
    want = platform or manifest.host_platform()
    with Repository(ref, insecure=insecure) as repo:
        image, data, digest = resolve(repo, ref, want)
        config = repo.blob_bytes(image.config.digest, image.config.size)
        diff_ids = _diff_ids(config, f"{repo.name}: config {image.config.digest}")
        if len(diff_ids) != len(image.layers):
            raise RegistryError(f"{repo.name}: manifest {digest} lists {len(image.layers)} "
                                f"layers, its config {len(diff_ids)} diff ids")
        chains = [c.removeprefix("sha256:") for c in load.chain_ids(diff_ids)]
        have = {c for c in chains  # a layer a dead import left half-applied is fetched
                if driver.exists(c) and incomplete.owner(driver.layout, c) is None}
        staging = driver.layout.staging(staging_name("pull", secrets.token_hex(4)))
        os.makedirs(driver.layout.staging_dir, exist_ok=True)
        os.mkdir(staging)
        try:
            top, fetched = _store(driver, repo, image, data, digest, config, chains, have,
                                  staging, events)
        finally:
            with contextlib.suppress(OSError):
                rmtree(staging)
    with driver.locked():  # a push or pull beside this one writes the same record
        blobinfo.remember(driver.layout, ref.host, ref.path, image.layers, diff_ids)
    events.emit("pulled", id=top, digest=digest, reference=ref.familiar())
    return Pulled(top, digest, len(image.layers), fetched)


def _layout(staging: str, data: bytes, digest: str, config: bytes,
            image: manifest.Manifest, name: str) -> None:
    """The OCI image layout the import path reads: index, manifest and config now,
    layer blobs as they arrive."""
    def put(rel: str, content: bytes) -> None:
        path = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "xb") as f:
            f.write(content)

    put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    put(load.blob_path(digest), data)
    put(load.blob_path(image.config.digest), config)
    desc = {"mediaType": image.media_type, "digest": digest, "size": len(data),
            "annotations": {oci.REF_NAME: name}}
    put("index.json", json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode())


def _store(driver: Driver, repo: Repository, image: manifest.Manifest, data: bytes,
           digest: str, config: bytes, chains: list[str], have: set[str], staging: str,
           events: Events) -> tuple[str, int]:
    _layout(staging, data, digest, config, image, repo.ref.familiar())
    wanted: dict[str, manifest.Descriptor] = {}
    for layer, chain in zip(image.layers, chains, strict=True):
        if chain in have:
            events.layer(layer.digest, "exists", id=chain)
        else:
            wanted.setdefault(layer.digest, layer)

    def download(layer: manifest.Descriptor) -> None:
        path = os.path.join(staging, load.blob_path(layer.digest))
        where = f"{repo.name}: blob {layer.digest}"
        events.layer(layer.digest, "downloading", size=layer.size)
        with events.transfer("download", layer.digest, layer.size) as on_bytes:
            repo.fetch_blob(layer.digest, layer.size, path, on_bytes)
        with open(path, "rb") as f:
            manifest.check_compression(layer.media_type, f.read(4), where)
        events.layer(layer.digest, "downloaded")

    os.makedirs(os.path.join(staging, "blobs", "sha256"), exist_ok=True)
    with cf.ThreadPoolExecutor(PARALLEL, thread_name_prefix="aufs-pull") as pool:
        pending = {load.blob_path(d): pool.submit(download, layer) for d, layer in wanted.items()}
        try:
            src = _Downloading(staging, pending)
            parsed = load.read_image(src)
            with events.transfer("extract", digest, None) as on_bytes:
                top = load.store_image(driver, src, parsed, on_bytes=on_bytes)
        except BaseException as exc:
            repo.cancel()
            for future in pending.values():
                future.cancel()
            cause = _first_failure(pending)
            if cause is not None and isinstance(exc, Cancelled | RegistryError):
                raise cause from None
            raise
    for layer, chain in zip(image.layers, chains, strict=True):
        if chain not in have:
            events.layer(layer.digest, "extracted", id=chain)
    return top, len(wanted)


def _first_failure(pending: dict[str, cf.Future[None]]) -> BaseException | None:
    """The download error that stopped the pull (not the cancellations it caused)."""
    for future in pending.values():
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None and not isinstance(exc, Cancelled):
                return exc
    return None

