"""Credentials from Docker's client config: ``$DOCKER_CONFIG/config.json`` (default
``~/.docker/config.json``), the ``auths`` entries ``docker login`` writes.

An entry holds ``auth`` (base64 of ``user:password``) or ``username``/``password``, and may
hold an ``identitytoken`` (an OAuth refresh token, traded at the token endpoint) or a
``registrytoken`` (a bearer token sent as it is). Docker Hub's key is
``https://index.docker.io/v1/``; other registries are keyed by ``host[:port]``, with or
without a scheme and path. Credential helpers (``credsStore``) are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass

from aufs.errors import RegistryError
from aufs.registry.reference import DOCKER_HUB

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""   # OAuth refresh token
    registry_token: str = ""   # bearer token, used as is

    @property
    def has_password(self) -> bool:
        return bool(self.username)


def config_path() -> str:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def _key_host(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``."""
    host = key.split("://", 1)[-1]
    return host.split("/", 1)[0]


def lookup(host: str, path: str | None = None) -> Credentials | None:
    """The credentials stored for registry ``host`` (``docker.io`` for Docker Hub)."""
    path = path or config_path()
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: cannot read it ({exc})") from exc
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = {DOCKER_HUB, "index.docker.io", "registry-1.docker.io"} \
        if host == DOCKER_HUB else {host}
    for key, entry in auths.items():
        if isinstance(entry, dict) and _key_host(str(key)) in wanted:
            return _entry(entry, str(key), path)
    return None


def _entry(entry: dict[str, object], key: str, path: str) -> Credentials:
    def text(name: str) -> str:
        value = entry.get(name)
        return value if isinstance(value, str) else ""

    username, password = text("username"), text("password")
    if text("auth"):
        try:
            decoded = base64.b64decode(text("auth"), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: auths[{key!r}].auth is not base64 of "
                                "user:password") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise RegistryError(f"{path}: auths[{key!r}].auth is not base64 of user:password")
    return Credentials(username, password, text("identitytoken"), text("registrytoken"))
