"""Manifests and indexes: media types, what a manifest must hold, the platform choice.

Accepted: OCI image manifests and indexes, Docker schema-2 manifests and manifest lists.
A document must be what it was served as (its ``mediaType``, when present, agrees with
the ``Content-Type``), its descriptors must carry a digest, a size and a media type we
know for their place (a config is a config, a layer a tar, optionally gzip or zstd).
Docker schema 1 is refused: registries have converted it away since 2019.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aufs.errors import RegistryError
from aufs.image import oci
from aufs.image.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    OCI_INDEX,
    OCI_MANIFEST,
)

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CONFIG_TYPES = (oci.OCI_CONFIG, oci.DOCKER_CONFIG)
# layer media type -> its compression ("" for a plain tar)
LAYER_TYPES = {
    oci.OCI_LAYER: "",
    oci.OCI_LAYER_GZIP: "gzip",
    oci.OCI_LAYER_ZSTD: "zstd",
    oci.OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    oci.DOCKER_LAYER_GZIP: "gzip",
    oci.DOCKER_LAYER_FOREIGN_GZIP: "gzip",
    oci.DOCKER_LAYER: "",
}
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise RegistryError(f"{where}: not a descriptor")
    digest, size, media_type = obj.get("digest"), obj.get("size"), obj.get("mediaType")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise RegistryError(f"{where}: missing or unsupported digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{where}: missing or invalid size {size!r}")
    if not isinstance(media_type, str):
        raise RegistryError(f"{where}: no mediaType")
    plat = obj.get("platform")
    return Descriptor(media_type, digest, size, plat if isinstance(plat, dict) else None)


def parse(data: bytes, content_type: str, where: str) -> Index | Manifest:
    """A manifest or index document served as ``content_type``."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{where}: not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise RegistryError(f"{where}: mediaType is not a string")
    if content_type in DOCKER_SCHEMA1 or declared in DOCKER_SCHEMA1 or \
            doc.get("schemaVersion") == 1:
        raise RegistryError(f"{where}: Docker schema 1 manifests are not supported")
    kind = declared or content_type
    if declared and content_type in MANIFEST_TYPES and declared != content_type:
        raise RegistryError(f"{where}: served as {content_type} but says it is {declared}")
    if kind not in MANIFEST_TYPES:  # OCI without mediaType, served as json: look inside
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else kind
    if doc.get("schemaVersion") != 2:
        raise RegistryError(f"{where}: schemaVersion is not 2")
    if kind in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise RegistryError(f"{where}: an index without a manifests list")
        return Index(kind, tuple(_descriptor(m, f"{where} manifests[{i}]")
                                 for i, m in enumerate(entries)))
    if kind not in MANIFEST_TYPES:
        raise RegistryError(f"{where}: unsupported manifest type {kind!r}")
    config = _descriptor(doc.get("config"), f"{where} config")
    if config.media_type not in CONFIG_TYPES:
        raise RegistryError(f"{where}: the config has media type {config.media_type!r}, "
                            "not an image config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{where}: no layers list")
    descs = tuple(_descriptor(x, f"{where} layers[{i}]") for i, x in enumerate(layers))
    for i, d in enumerate(descs):
        if d.media_type not in LAYER_TYPES:
            raise RegistryError(f"{where} layers[{i}]: media type {d.media_type!r} is not "
                                "a layer tar")
    return Manifest(kind, config, descs)


def check_compression(media_type: str, head: bytes, where: str) -> None:
    """The blob's first bytes agree with what its media type says."""
    want = LAYER_TYPES.get(media_type, "")
    got = next((k for k, magic in _MAGIC.items() if head.startswith(magic)), "")
    if want != got:
        raise RegistryError(f"{where}: media type {media_type} says "
                            f"{want or 'an uncompressed tar'}, the blob is "
                            f"{got or 'not compressed'}")


# -- platforms ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))


def host_platform() -> Platform:
    return Platform("linux", oci.host_arch(), oci.host_variant())


def parse_platform(text: str) -> Platform:
    """``linux/arm64/v8``, ``linux/amd64``; the os may be left out (``arm64``: linux)."""
    parts = text.strip().lower().split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"invalid platform {text!r}: use os/arch[/variant], e.g. linux/amd64")
    if len(parts) == 1:
        parts = ["linux", *parts]
    arch = oci.ARCH.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ""
    return Platform(parts[0], arch, variant)


def choose(index: Index, want: Platform, where: str) -> Descriptor:
    """The index entry for ``want``: same os and architecture; the variant must match if
    both name one (arm64's is v8 when left out)."""
    def variant(p: dict[str, Any]) -> str:
        v = p.get("variant") or ""
        return str(v) if v or p.get("architecture") != "arm64" else "v8"

    candidates = []
    for desc in index.manifests:
        p = desc.platform or {}
        if p.get("os") != want.os or p.get("architecture") != want.architecture:
            continue
        if want.variant and variant(p) and variant(p) != want.variant:
            continue
        candidates.append(desc)
    if not candidates:
        have = ", ".join(sorted({str(Platform(str((d.platform or {}).get("os", "?")),
                                              str((d.platform or {}).get("architecture", "?")),
                                              str((d.platform or {}).get("variant", ""))))
                                 for d in index.manifests})) or "none"
        raise RegistryError(f"{where}: no image for {want} (the index has: {have})")
    for desc in candidates:
        if desc.media_type in INDEX_TYPES or desc.media_type in MANIFEST_TYPES:
            return desc
    return candidates[0]
