"""Registry authentication as an ``httpx.Auth``: basic, and bearer tokens from the realm a
``WWW-Authenticate`` challenge names (Docker's token protocol).

The first request goes out with what we have (a token still valid, or nothing). On a 401
the challenge says how to authenticate: ``Basic`` — send the stored user and password;
``Bearer realm=…,service=…,scope=…`` — ask the realm for a token for the challenge's scope
and every scope this client needs (pull, push, the repositories a blob may be mounted
from), then send the request again with it. A stored ``identitytoken`` is traded for a token
by OAuth's refresh-token grant; a ``registrytoken`` is sent as it is. The challenge is
split by the standard library's RFC 2068 list parser (``urllib.request.parse_http_list``).
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.request
from collections.abc import Generator

import httpx

from aufs.errors import RegistryError
from aufs.registry.credentials import Credentials

_MIN_TTL = 60          # a token without expires_in lives this long (the spec's default)


def parse_challenge(header: str) -> tuple[str, dict[str, str]] | None:
    """``Bearer realm="r",service="s"`` -> ``("bearer", {"realm": "r", "service": "s"})``."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params: dict[str, str] = {}
    for item in urllib.request.parse_http_list(rest):
        key, sep, value = item.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"')
        params[key.strip().lower()] = value
    return scheme.lower(), params


def _basic(creds: Credentials) -> str:
    pair = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


class RegistryAuth(httpx.Auth):
    def __init__(self, credentials: Credentials | None, scopes: list[str]) -> None:
        self._creds = credentials
        self._scopes = scopes
        self._lock = threading.Lock()
        self._header: str | None = None
        self._expires = 0.0
        if credentials is not None and credentials.registry_token:
            self._header = "Bearer " + credentials.registry_token
            self._expires = float("inf")

    def _attach(self, request: httpx.Request) -> None:
        with self._lock:
            header = self._header if time.monotonic() < self._expires else None
        if header is not None:
            request.headers["Authorization"] = header

    def sync_auth_flow(self, request: httpx.Request
                       ) -> Generator[httpx.Request, httpx.Response, None]:
        self._attach(request)
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None:
            return
        scheme, params = challenge
        if scheme == "basic":
            if self._creds is None or not self._creds.has_password:
                return
            self._set(_basic(self._creds), float("inf"))
        elif scheme == "bearer":
            token_response = yield self._token_request(params)
            token_response.read()
            self._take_token(token_response, params)
        else:
            return
        self._attach(request)
        yield request

    def _set(self, header: str, ttl: float) -> None:
        with self._lock:
            self._header = header
            self._expires = time.monotonic() + ttl

    def _token_request(self, params: dict[str, str]) -> httpx.Request:
        realm = params.get("realm")
        if not realm:
            raise RegistryError("the registry asks for a bearer token but names no realm")
        scopes = list(self._scopes)
        if params.get("scope"):
            scopes += [s for s in params["scope"].split(" ") if s not in scopes]
        creds = self._creds
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "aufs", "scope": " ".join(scopes)}
            if params.get("service"):
                form["service"] = params["service"]
            return httpx.Request("POST", realm, data=form)
        query: list[tuple[str, str | int | float | bool | None]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        headers = {}
        if creds is not None and creds.has_password:
            headers["Authorization"] = _basic(creds)
        return httpx.Request("GET", realm, params=query, headers=headers)

    def _take_token(self, response: httpx.Response, params: dict[str, str]) -> None:
        where = params.get("realm", "the token server")
        if response.status_code in (401, 403):
            raise RegistryError(f"{where} refused a token ({response.status_code}): wrong or "
                                "missing credentials (docker login writes them)")
        if response.status_code != 200:
            raise RegistryError(f"{where} answered {response.status_code} "
                                f"{response.reason_phrase} to a token request")
        try:
            body = response.json()
        except ValueError as exc:
            raise RegistryError(f"{where}: the token response is not JSON") from exc
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{where}: the token response holds no token")
        ttl = body.get("expires_in")
        ttl = ttl if isinstance(ttl, int | float) and ttl > 0 else _MIN_TTL
        self._set("Bearer " + token, max(ttl - 10, 5))
