"""The image vocabulary shared by import, export, pull and push: media types, annotation
keys, and this host's architecture by Go's name (as image configs and indexes give it).

A constant of the OCI image spec or Docker's distribution formats is written here once;
this module imports nothing of ``aufs`` and nothing heavy (``aufs export`` loads it).
"""

from __future__ import annotations

import os

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# index annotations naming an image
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

# `uname -m` -> GOARCH (and GOARCH -> itself, so either form may be looked up)
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
        "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_VARIANT = {"aarch64": "v8", "arm64": "v8", "armv7l": "v7", "armv6l": "v6"}


def _machine() -> str:
    return os.uname().machine.lower()  # what platform.machine() says, without its import


def host_arch() -> str:
    """This host's architecture by Go's name: ``amd64``, ``arm64``..."""
    machine = _machine()
    return ARCH.get(machine, machine)


def host_variant() -> str:
    """This host's architecture variant (``v8`` on arm64), or ""."""
    return _VARIANT.get(_machine(), "")
