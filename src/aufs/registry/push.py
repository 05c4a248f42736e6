"""``aufs push ID REF``: the image whose top layer is ``ID`` to a registry.

The blobs are the ones ``aufs export`` writes (:func:`aufs.image.save.image_blobs`: the
layers compressed into a staging directory under the store, the config, the manifest).
Each layer then goes up, several at a time, in the first way that works:

1. ``HEAD`` of its digest: the repository has it already;
2. a blob the same layer (same diff id) was pulled or pushed as, known from
   :mod:`.blobinfo`: ``HEAD`` in this repository, else a cross-repository mount from the
   repository it was seen in (``POST …/uploads/?mount=…&from=…``) — the manifest then
   names that blob;
3. an upload: one ``PUT`` for a blob up to 64 MiB, ``PATCH`` chunks of 32 MiB above that.

Then the config, and last the manifest under the tag (or the digest the reference names,
which must be the manifest's). The staging directory is removed whatever happens.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

from aufs._sys.files import rmtree
from aufs.driver import Driver
from aufs.image import oci, save
from aufs.registry import RegistryError, blobinfo, manifest
from aufs.registry.client import Cancelled, Repository
from aufs.registry.events import Events
from aufs.registry.manifest import Descriptor
from aufs.registry.reference import Reference
from aufs.store.staging import name as staging_name

PARALLEL = 3

_FAMILY = {  # manifest type -> compression -> layer media type
    oci.OCI_MANIFEST: {"": oci.OCI_LAYER, "gzip": oci.OCI_LAYER_GZIP,
                       "zstd": oci.OCI_LAYER_ZSTD},
    oci.DOCKER_MANIFEST: {"": oci.DOCKER_LAYER, "gzip": oci.DOCKER_LAYER_GZIP},
}


@dataclass(frozen=True, slots=True)
class Pushed:
    digest: str
    size: int
    uploaded: int     # layer blobs sent
    mounted: int      # layer blobs mounted from another repository
    existing: int     # layer blobs the repository had


def push(driver: Driver, layer_id: str, ref: Reference, *, insecure: bool = False,
         events: Events | None = None) -> Pushed:
    events = events or Events()
    staging = driver.layout.staging(staging_name("push", secrets.token_hex(4)))
    os.makedirs(driver.layout.staging_dir, exist_ok=True)
    os.mkdir(staging)
    try:
        with events.transfer("pack", layer_id, None) as on_bytes:
            image = save.image_blobs(driver, layer_id, staging, on_bytes=on_bytes)
        return _push(driver, image, ref, insecure, staging, events)
    finally:
        with contextlib.suppress(OSError):
            rmtree(staging)


def _push(driver: Driver, image: save.ImageBlobs, ref: Reference, insecure: bool,
          staging: str, events: Events) -> Pushed:
    doc: dict[str, Any] = json.loads(image.manifest.data or b"{}")
    kind = doc.get("mediaType") or oci.OCI_MANIFEST
    family = _FAMILY.get(kind, _FAMILY[oci.OCI_MANIFEST])
    seen = [[s for s in blobinfo.seen(driver.layout, d, ref.host)
             if manifest.LAYER_TYPES.get(s.media_type) in family]
            for d in image.diff_ids]
    sources = sorted({s.repo for ss in seen for s in ss})
    counts = {"uploaded": 0, "mounted": 0, "exists": 0}

    with Repository(ref, insecure=insecure, push=True, mount_from=sources) as repo:
        def send(i: int) -> dict[str, Any] | None:
            """Layer ``i`` into the repository; a replacement descriptor or None."""
            blob = image.layers[i]
            if repo.has_blob(blob.digest):
                events.layer(blob.digest, "exists")
                counts["exists"] += 1
                return None
            location = None
            for s in seen[i]:
                desc = {"mediaType": family[manifest.LAYER_TYPES[s.media_type]],
                        "digest": s.digest, "size": s.size}
                if s.repo == ref.path:
                    if repo.has_blob(s.digest):
                        events.layer(s.digest, "exists")
                        counts["exists"] += 1
                        return desc
                    continue
                location = repo.start_upload(mount=(s.digest, s.repo))
                if location is None:
                    events.layer(s.digest, "mounted", source=f"{ref.host}/{s.repo}")
                    counts["mounted"] += 1
                    return desc if s.digest != blob.digest else None
            assert blob.path is not None
            events.layer(blob.digest, "uploading", size=blob.size)
            with events.transfer("upload", blob.digest, blob.size) as on_bytes:
                repo.upload(blob.path, blob.digest, blob.size, on_bytes, location=location)
            events.layer(blob.digest, "uploaded")
            counts["uploaded"] += 1
            return None

        with cf.ThreadPoolExecutor(PARALLEL, thread_name_prefix="aufs-push") as pool:
            futures = [pool.submit(send, i) for i in range(len(image.layers))]
            try:
                replaced = [f.result() for f in futures]
            except BaseException as exc:
                repo.cancel()
                cause = _first_failure(futures)
                if cause is not None and isinstance(exc, Cancelled):
                    raise cause from None
                raise
        for i, desc in enumerate(replaced):
            if desc is not None:
                doc["layers"][i] = desc
        _config(repo, image.config, staging)
        data = image.manifest.data if not any(replaced) else \
            json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        assert data is not None
        digest = blobinfo.digest_of(data)
        if ref.digest is not None and ref.tag is None and digest != ref.digest:
            raise RegistryError(f"the image's manifest is {digest}, not the {ref.digest} "
                                "the reference names")
        repo.put_manifest(ref.tag or ref.object, data, kind)
    final = [Descriptor(d["mediaType"], d["digest"], d["size"]) for d in doc["layers"]]
    with driver.locked():
        blobinfo.remember(driver.layout, ref.host, ref.path, final, image.diff_ids)
    events.emit("pushed", digest=digest, size=len(data), reference=ref.familiar())
    return Pushed(digest, len(data), counts["uploaded"], counts["mounted"], counts["exists"])


def _config(repo: Repository, config: save.Blob, staging: str) -> None:
    if repo.has_blob(config.digest):
        return
    path = config.path
    if path is None:
        path = os.path.join(staging, "config.json")
        with open(path, "wb") as f:
            f.write(config.data or b"")
    repo.upload(path, config.digest, config.size)


def _first_failure(futures: list[cf.Future[dict[str, Any] | None]]) -> BaseException | None:
    for f in futures:
        try:
            exc = f.exception()
        except cf.CancelledError:
            continue
        if exc is not None and not isinstance(exc, Cancelled):
            return exc
    return None
