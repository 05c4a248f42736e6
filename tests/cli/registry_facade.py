"""A registry served by the test itself (http.server on 127.0.0.1, port 0): a token
endpoint and a v2 API over an image held in memory, with faults a test switches on."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeImage:
    layers: list[bytes]                         # uncompressed tars
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifest: bytes = b""
    layer_digests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        descs = []
        for tar in self.layers:
            gz = gzip.compress(tar, mtime=0)
            self.blobs[sha(gz)] = gz
            self.layer_digests.append(sha(gz))
            descs.append({"mediaType": GZIP_LAYER, "digest": sha(gz), "size": len(gz)})
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [sha(t) for t in self.layers]}}).encode()
        self.blobs[sha(config)] = config
        self.manifest_doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(config), "size": len(config)},
            "layers": descs}
        self.manifest = json.dumps(self.manifest_doc).encode()


@dataclass
class Facade:
    image: FakeImage
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)   # token endpoint's credentials
    bearer: bool = True                                   # else open
    faults: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    token_queries: list[dict[str, list[str]]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    TOKEN = "t0k3n"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        self.faults.clear()
        self.log.clear()
        self.token_queries.clear()
        self.counts.clear()

    def count(self, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]


def _handler(f: Facade) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            f.log.append(f"{self.command} {self.path}")

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"errors": [{"code": kind, "message": message}]}).encode()
            self._send(code, body, {"Content-Type": "application/json", **(headers or {})})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/token":
                return self._token(url.query)
            if f.bearer and self.headers.get("Authorization") != f"Bearer {f.TOKEN}":
                scope = ""
                parts = url.path.split("/")
                if len(parts) > 4:
                    scope = f',scope="repository:{"/".join(parts[2:-2])}:pull"'
                challenge = (f'Bearer realm="http://{f.address}/token",'
                             f'service="facade"{scope}')
                return self._error(401, "UNAUTHORIZED", "authentication required",
                                   {"WWW-Authenticate": challenge})
            if url.path == "/v2/":
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            status = f.faults.get("status")
            if status is not None:
                which, code, times = status
                if which in url.path and f.count("status") <= times:
                    return self._error(code, "FAULT", "injected")
            if "/manifests/" in url.path:
                return self._manifest()
            if "/blobs/" in url.path:
                return self._blob(url.path.rsplit("/", 1)[1])
            self._error(404, "NAME_UNKNOWN", "no such thing")

        def _token(self, query: str) -> None:
            f.token_queries.append(parse_qs(query))
            auth = self.headers.get("Authorization", "")
            ok = not f.users
            if auth.startswith("Basic "):
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                ok = f.users.get(user) == pw
            if not ok:
                return self._error(401, "UNAUTHORIZED", "bad credentials")
            self._send(200, json.dumps({"token": f.TOKEN, "expires_in": 300}).encode(),
                       {"Content-Type": "application/json"})

        def _manifest(self) -> None:
            if f.faults.get("manifest_404"):
                return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            body = f.faults.get("manifest_body", f.image.manifest)
            kind = f.faults.get("manifest_type", OCI_MANIFEST)
            self._send(200, body, {"Content-Type": kind, "Docker-Content-Digest": sha(body)})

        def _blob(self, digest: str) -> None:
            data = f.image.blobs.get(digest)
            if data is None:
                return self._error(404, "BLOB_UNKNOWN", "blob unknown")
            if digest in f.faults.get("corrupt", ()):
                data = data[:-5] + b"XXXXX"
            if digest in f.faults.get("truncate", ()):
                data = data[: len(data) // 2]
            if digest in f.faults.get("reset", ()) and f.count("reset") <= 1:
                # promise the whole blob, send half, drop the connection
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            self._send(200, data, {"Content-Type": "application/octet-stream"})

    return Handler


@contextlib.contextmanager
def serve(image: FakeImage, **kw: Any) -> Iterator[Facade]:
    facade = Facade(image, **kw)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(facade))
    server.daemon_threads = True
    facade.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield facade
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
