"""Image references as ``docker`` writes them: ``[host[:port]/]path[:tag][@digest]``.

Docker's defaults: no host (the first component has no ``.`` or ``:`` and is not
``localhost``) means Docker Hub (``docker.io``, served at ``registry-1.docker.io``), a
one-component path on Docker Hub gets ``library/``, and no tag and no digest means
``latest``. The grammar is distribution's ``reference`` package's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from aufs.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_RE = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
                      r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                      r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


@dataclass(frozen=True, slots=True)
class Reference:
    host: str            # as written, with its port: docker.io, localhost:5000, [::1]:5000
    path: str            # library/busybox, team/app
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """Where the API is served (Docker Hub's name differs from its API host)."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def hostname(self) -> str:
        """The host without its port or brackets."""
        host = self.host
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def object(self) -> str:
        """What to ask for under ``/manifests/``: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        """The full form: ``docker.io/library/busybox:latest``."""
        return self.host + "/" + self._tail(self.path)

    def familiar(self) -> str:
        """As ``docker images`` shows it: ``busybox:latest``, ``localhost:5000/a/b:1``."""
        if self.host == DOCKER_HUB:
            return self._tail(self.path.removeprefix("library/")
                              if self.path.count("/") == 1 else self.path)
        return str(self)

    def _tail(self, path: str) -> str:
        out = path
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out


def is_loopback(hostname: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: where Docker allows plain HTTP by default."""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def parse(text: str) -> Reference:
    """``text`` as a :class:`Reference` with Docker's defaults filled in."""
    def bad(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"invalid reference {text!r}: {why}")

    if not text or len(text) > 255 + 150:
        raise bad("empty or too long")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise bad("the digest must be sha256:<64 hex> or sha512:<128 hex>")
    host, path = DOCKER_HUB, rest
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        host, path = first, remainder
        if not _HOST_RE.fullmatch(host):
            raise bad(f"{host!r} is not a registry host")
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise bad(f"{tag!r} is not a tag")
    if not _PATH_RE.fullmatch(path):
        raise bad("a repository name is lowercase letters, digits and separators (. _ __ -), "
                  "components joined by /")
    if len(path) > 255:
        raise bad("the repository name is longer than 255 characters")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, path, tag, digest)
