"""One repository on a registry, over HTTP: the calls of the distribution API we use.

Transport: TLS with verification, except for a loopback registry (``localhost``,
127.0.0.0/8, ``::1``) or ``--insecure``, where — as Docker does — HTTPS is tried without
verification first and plain HTTP after it. Every call is retried on transient failures
(a connection refused or reset, a body cut short, 408/429/5xx) with exponential backoff, a
bounded number of times; what still fails becomes one :class:`RegistryError` line. Blobs
stream to and from files in 1 MiB pieces and are checked against their digest and size
as they pass; nothing is held whole in memory but manifests and configs (bounded).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TypeVar

import httpx

from aufs.errors import RegistryError
from aufs.registry import credentials as creds_mod
from aufs.registry.auth import RegistryAuth
from aufs.registry.manifest import MANIFEST_TYPES
from aufs.registry.reference import Reference, is_loopback

OnBytes = Callable[[int], None]
T = TypeVar("T")

ATTEMPTS = 4
BACKOFF = 0.25                  # seconds before the 2nd attempt; doubles each time
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20
MAX_CONFIG = 16 << 20
MONOLITHIC_MAX = 64 << 20       # larger blobs go up in chunks (PATCH)
UPLOAD_CHUNK = 32 << 20


class Cancelled(Exception):
    """Another part of the operation failed; this one stops."""


class _Transient(Exception):
    """A failure worth another attempt."""


def _detail(r: httpx.Response) -> str:
    """The first message of a distribution error body, if any."""
    try:
        r.read()
        body = r.json()
        err = body["errors"][0]
        return f" ({err.get('code', '')}: {err.get('message', '')})".replace(": )", ")")
    except Exception:
        return ""


@dataclass(slots=True)
class _Session:
    """A chunked upload under way: where to send the next chunk, and from which byte."""

    loc: str
    offset: int = 0
    tries: int = 0


class Repository:
    """``ref``'s repository on its registry; a context manager that closes the client."""

    def __init__(self, ref: Reference, *, insecure: bool = False, push: bool = False,
                 mount_from: Sequence[str] = ()) -> None:
        self.ref = ref
        scopes = [f"repository:{ref.path}:pull" + (",push" if push else "")]
        scopes += [f"repository:{path}:pull" for path in mount_from if path != ref.path]
        self._lenient = insecure or is_loopback(ref.hostname)
        self._stop = threading.Event()
        self._client = httpx.Client(
            auth=RegistryAuth(creds_mod.lookup(ref.host), scopes),
            verify=not self._lenient, follow_redirects=True,
            timeout=httpx.Timeout(60.0, connect=20.0),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            headers={"User-Agent": "aufs"})
        try:
            self.base = self._ping()
        except BaseException:
            self._client.close()
            raise

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def cancel(self) -> None:
        """Make transfers running in other threads stop at their next piece."""
        self._stop.set()

    @property
    def name(self) -> str:
        return f"{self.ref.host}/{self.ref.path}"

    def url(self, tail: str) -> str:
        return f"{self.base}{self.ref.path}/{tail}"

    # -- plumbing ----------------------------------------------------------------------

    def _ping(self) -> str:
        host = self.ref.api_host
        schemes = ("https", "http") if self._lenient else ("https",)
        for scheme in schemes:
            base = f"{scheme}://{host}/v2/"
            last = scheme == schemes[-1]
            try:
                r = self._retry(partial(self._send, "GET", base), f"GET {base}") if last \
                    else self._send("GET", base)
            except (httpx.TransportError, _Transient):
                continue  # not the last scheme (_retry turns the last one's into ours)
            with contextlib.closing(r):
                if r.status_code == 200:
                    return base
                self._fail(r, f"{host}: the registry API (GET /v2/)")
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
              content: bytes | Iterator[bytes] | None = None,
              params: dict[str, str] | None = None) -> httpx.Response:
        """One request, its response streamed (the caller closes it)."""
        if self._stop.is_set():
            raise Cancelled
        try:
            request = self._client.build_request(method, url, headers=headers,
                                                 content=content, params=params)
            r = self._client.send(request, stream=True)
        except httpx.StreamError as exc:
            # A body sent once cannot be sent again (a 401 after the token expired while
            # it went up): the retry makes the request anew, body and all.
            raise _Transient(f"{method} {url}: {exc}") from exc
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise RegistryError(f"{url}: the registry's TLS certificate is not valid "
                                    f"({exc}); --insecure skips the check") from exc
            raise
        if r.status_code in _TRANSIENT:
            r.close()
            raise _Transient(f"{method} {url}: {r.status_code} {r.reason_phrase}")
        return r

    def _retry(self, action: Callable[[], T], what: str) -> T:
        for attempt in range(ATTEMPTS):
            try:
                return action()
            except (httpx.TransportError, _Transient) as exc:
                if attempt == ATTEMPTS - 1:
                    why = str(exc) or type(exc).__name__
                    raise RegistryError(f"{what}: {why} (gave up after {ATTEMPTS} attempts)"
                                        ) from exc
                delay = BACKOFF * (2 ** attempt) * (0.75 + random.random() / 2)
                if self._stop.wait(delay):
                    raise Cancelled from exc
        raise AssertionError("unreachable")

    def _fail(self, r: httpx.Response, what: str) -> NoReturn:
        detail = _detail(r)
        if r.status_code == 401:
            raise RegistryError(f"{what}: unauthorized{detail}: wrong or missing credentials "
                                f"for {self.ref.host} (docker login writes them to "
                                f"{creds_mod.config_path()})")
        if r.status_code == 403:
            raise RegistryError(f"{what}: denied{detail}")
        if r.status_code == 404:
            raise RegistryError(f"{what}: not found{detail}")
        raise RegistryError(f"{what}: the registry answered {r.status_code} "
                            f"{r.reason_phrase}{detail}")

    # -- reading -----------------------------------------------------------------------

    def manifest(self, obj: str) -> tuple[bytes, str]:
        """The manifest (or index) named by a tag or digest: its bytes and Content-Type."""
        url = self.url(f"manifests/{obj}")

        def get() -> tuple[bytes, str]:
            r = self._send("GET", url, headers={"Accept": ", ".join(MANIFEST_TYPES)})
            with contextlib.closing(r):
                if r.status_code != 200:
                    self._fail(r, f"{self.name}: manifest {obj}")
                data = bytearray()
                for chunk in r.iter_bytes(_CHUNK):
                    data += chunk
                    if len(data) > MAX_MANIFEST:
                        raise RegistryError(f"{self.name}: manifest {obj} is larger than "
                                            f"{MAX_MANIFEST >> 20} MiB")
                kind = r.headers.get("content-type", "").split(";")[0].strip()
                return bytes(data), kind

        return self._retry(get, f"GET {url}")

    def blob_bytes(self, digest: str, size: int, limit: int = MAX_CONFIG) -> bytes:
        """A small blob (a config, a manifest), checked against its digest and size."""
        if size > limit:
            raise RegistryError(f"{self.name}: blob {digest} claims {size} bytes, more than "
                                f"{limit >> 20} MiB")
        out = bytearray()

        def sink(chunk: bytes) -> None:
            out.extend(chunk)

        self._get_blob(digest, size, sink, lambda: out.clear(), None)
        return bytes(out)

    def fetch_blob(self, digest: str, size: int, path: str,
                   on_bytes: OnBytes | None = None) -> None:
        """Download a blob into ``path``, checked against its digest and size."""
        with open(path, "wb") as f:
            def restart() -> None:
                f.seek(0)
                f.truncate()

            self._get_blob(digest, size, f.write, restart, on_bytes)

    def _get_blob(self, digest: str, size: int, sink: Callable[[bytes], object],
                  restart: Callable[[], None], on_bytes: OnBytes | None) -> None:
        url = self.url(f"blobs/{digest}")
        algorithm = digest.split(":", 1)[0]
        what = f"{self.name}: blob {digest}"

        def get() -> None:
            restart()
            h = hashlib.new(algorithm)
            n = 0
            r = self._send("GET", url, headers={"Accept-Encoding": "identity"})
            with contextlib.closing(r):
                if r.status_code != 200:
                    self._fail(r, what)
                for chunk in r.iter_raw(_CHUNK):
                    if self._stop.is_set():
                        raise Cancelled
                    n += len(chunk)
                    if n > size:
                        raise RegistryError(f"{what}: longer than the {size} bytes the "
                                            "manifest says")
                    h.update(chunk)
                    sink(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            if n != size:
                raise RegistryError(f"{what}: truncated ({n} of the {size} bytes the "
                                    "manifest says)")
            got = f"{algorithm}:{h.hexdigest()}"
            if got != digest:
                raise RegistryError(f"{what}: digest mismatch (got {got})")

        self._retry(get, f"GET {url}")

    # -- writing -----------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        url = self.url(f"blobs/{digest}")

        def head() -> bool:
            r = self._send("HEAD", url)
            with contextlib.closing(r):
                if r.status_code == 200:
                    return True
                if r.status_code == 404:
                    return False
                self._fail(r, f"{self.name}: HEAD blob {digest}")

        return self._retry(head, f"HEAD {url}")

    def start_upload(self, mount: tuple[str, str] | None = None) -> str | None:
        """Start an upload session; its URL. With ``mount=(digest, repo)`` try a cross-
        repository mount first: None when the registry mounted the blob."""
        url = self.url("blobs/uploads/")
        params = {"mount": mount[0], "from": mount[1]} if mount else None

        def post() -> str | None:
            r = self._send("POST", url, params=params, headers={"Content-Length": "0"})
            with contextlib.closing(r):
                if r.status_code == 201 and mount is not None:
                    return None
                if r.status_code != 202:
                    self._fail(r, f"{self.name}: starting an upload")
                return self._location(r)

        return self._retry(post, f"POST {url}")

    def _location(self, r: httpx.Response) -> str:
        location = r.headers.get("location")
        if not location:
            raise RegistryError(f"{self.name}: the registry sent no upload location")
        return str(r.url.join(location))

    def upload(self, path: str, digest: str, size: int, on_bytes: OnBytes | None = None,
               *, chunk: int | None = None, location: str | None = None) -> None:
        """Upload the blob in ``path``: in one PUT, or in PATCH chunks when it is larger
        than ``chunk`` (default :data:`MONOLITHIC_MAX`, chunks of :data:`UPLOAD_CHUNK`)."""
        if chunk is None:
            chunk = UPLOAD_CHUNK if size > MONOLITHIC_MAX else 0
        if not chunk:
            def monolithic() -> None:
                loc = location or self.start_upload()
                assert loc is not None
                self._put_blob(loc, digest, path, 0, size, on_bytes)
            self._retry(monolithic, f"{self.name}: upload of {digest}")
            return
        start = location or self.start_upload()
        assert start is not None
        state = _Session(start)
        while state.offset < size:
            self._retry(lambda: self._patch(state, path, size, chunk, on_bytes),
                        f"{self.name}: upload of {digest}")
        self._retry(lambda: self._put_blob(state.loc, digest, path, size, size, None),
                    f"{self.name}: upload of {digest}")

    def _body(self, path: str, start: int, end: int, on_bytes: OnBytes | None
              ) -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                if self._stop.is_set():
                    raise Cancelled
                data = f.read(min(_CHUNK, left))
                if not data:
                    raise RegistryError(f"{path}: shrank while being uploaded")
                left -= len(data)
                if on_bytes is not None:
                    on_bytes(len(data))
                yield data

    def _patch(self, state: _Session, path: str, size: int, chunk: int,
               on_bytes: OnBytes | None) -> None:
        """Send the next chunk; after a failed one, ask the session where it stands."""
        loc, start = state.loc, state.offset
        state.tries += 1
        if state.tries > 1:
            status = self._send("GET", loc)
            with contextlib.closing(status):
                if status.status_code != 204:
                    self._fail(status, f"{self.name}: the upload session")
                rng = status.headers.get("range", "")
                start = int(rng.split("-", 1)[1]) + 1 if "-" in rng else 0
                if status.headers.get("location"):
                    loc = self._location(status)
        end = min(start + chunk, size)
        r = self._send("PATCH", loc, content=self._body(path, start, end, on_bytes),
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(end - start),
                                "Content-Range": f"{start}-{end - 1}"})
        with contextlib.closing(r):
            if r.status_code != 202:
                self._fail(r, f"{self.name}: uploading a chunk")
            state.loc, state.offset, state.tries = self._location(r), end, 0

    def _put_blob(self, loc: str, digest: str, path: str, start: int, end: int,
                  on_bytes: OnBytes | None) -> None:
        url = httpx.URL(loc)
        url = url.copy_merge_params({"digest": digest})
        body = self._body(path, start, end, on_bytes) if end > start else None
        r = self._send("PUT", str(url), content=body,
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(end - start)})
        with contextlib.closing(r):
            if r.status_code != 201:
                self._fail(r, f"{self.name}: finishing the upload of {digest}")

    def put_manifest(self, obj: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag or digest; its digest."""
        url = self.url(f"manifests/{obj}")

        def put() -> str:
            r = self._send("PUT", url, content=data, headers={"Content-Type": media_type})
            with contextlib.closing(r):
                if r.status_code != 201:
                    self._fail(r, f"{self.name}: storing the manifest")
            return "sha256:" + hashlib.sha256(data).hexdigest()

        return self._retry(put, f"PUT {url}")

