"""Images from and to a registry: the OCI distribution API (Docker registry v2).

Modules, each one concern: :mod:`.reference` (``host[:port]/repo:tag@digest`` with
Docker's defaults), :mod:`.credentials` (``~/.docker/config.json``), :mod:`.auth`
(basic and bearer-token auth as an ``httpx.Auth``), :mod:`.client` (one repository:
transport choice, retries, blobs and manifests), :mod:`.manifest` (media types, indexes,
platform choice), :mod:`.pull` and :mod:`.push`, :mod:`.events` (progress bars and
``--json`` events).
"""

from __future__ import annotations

from aufs.errors import InvalidReferenceError, RegistryError

__all__ = ["InvalidReferenceError", "RegistryError"]
