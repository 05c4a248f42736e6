"""The plugin's HTTP side: aiohttp on a unix socket, driver calls in a thread pool.

dockerd's plugin client (``pkg/plugins/client.go``) POSTs to ``/Plugin.Activate`` and
``/GraphDriver.<Method>`` and reads the answer as ``application/vnd.docker.plugins.v1+json``.
It retries a call for 30 s while it cannot connect, so a plugin restarted within that
time loses no call. A non-200 answer becomes an error from its ``Err`` field.

Driver calls block — mounts, extraction, tar walks — so each runs in a worker thread and
the event loop only moves bytes: ``ApplyDiff``'s body is read from the socket as the
extractor asks for it (:class:`BodyReader`; aiohttp stops reading the socket while its
small buffer is full), and ``Diff``'s tar is written as it is produced (a
``StreamResponse``, chunked). Neither is ever held whole in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import io
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from aufs.archive import ArchiveError
from aufs.docker.adopt import AdoptError
from aufs.docker.plugin import Body, GraphDriverPlugin, PluginError, RequestError
from aufs.graphdriver import DriverError

__all__ = ["PLUGINS_DIR", "BodyReader", "make_app", "serve", "socket_path"]

PLUGINS_DIR = "/run/docker/plugins"  # where dockerd 20.10 looks for plugin sockets
MIME = "application/vnd.docker.plugins.v1+json"
CHUNK = 4 << 20  # bytes of tar moved per worker round trip
WORKERS = 16     # concurrent driver calls (dockerd starts containers in parallel)

log = logging.getLogger("aufs.docker")
T = TypeVar("T")

_POOL: web.AppKey[concurrent.futures.ThreadPoolExecutor] = web.AppKey("pool")
_PLUGIN: web.AppKey[GraphDriverPlugin] = web.AppKey("plugin")


def socket_path(name: str, plugins_dir: str = PLUGINS_DIR) -> str:
    return os.path.join(plugins_dir, f"{name}.sock")


# -- answers ----------------------------------------------------------------------------

def _json(body: Body, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=MIME)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _failure(method: str, exc: BaseException) -> Body:
    """``{"Err": ...}`` for an exception; an unexpected one is logged with its traceback."""
    if not isinstance(exc, DriverError | ArchiveError | PluginError | AdoptError | ValueError
                      | OSError):
        log.error("%s failed", method, exc_info=exc)
        return {"Err": f"internal error in the {method} call: {type(exc).__name__}: {exc}"}
    log.info("%s: %s", method, _error_text(exc))
    return {"Err": _error_text(exc)}


async def _read_json(request: web.Request) -> Body:
    raw = await request.read()
    if not raw.strip():
        return {}  # Plugin.Activate has no body
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body is not a JSON object")
    return body


async def _in_thread(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[_POOL], fn, *args)


class _Handoff(Generic[T]):
    """A worker's result and the handler that waits for it: whichever comes second of
    "the result is there" and "the handler was cancelled" undoes the result."""

    def __init__(self, undo: Callable[[T], object]) -> None:
        self._undo = undo
        self._lock = threading.Lock()
        self._abandoned = False
        self._result: list[T] = []

    def deliver(self, result: T) -> T:  # in the worker
        with self._lock:
            abandoned = self._abandoned
            if not abandoned:
                self._result.append(result)
        if abandoned:
            self._undo(result)
        return result

    def abandon(self) -> None:  # in the handler, on cancellation
        with self._lock:
            self._abandoned = True
            left = self._result
        for result in left:
            self._undo(result)


async def _in_thread_undoable(request: web.Request, fn: Callable[[Body], T], body: Body,
                              undo: Callable[[T], object]) -> T:
    """``fn(body)`` in a worker; if the handler is cancelled while it runs (aiohttp's
    shutdown timeout ran out), what it made is undone once it is made: a ``Get``'s
    reference that dockerd never learnt of (so never puts), a ``Diff``'s open stream."""
    handoff: _Handoff[T] = _Handoff(undo)
    future = asyncio.get_running_loop().run_in_executor(
        request.app[_POOL], lambda: handoff.deliver(fn(body)))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        handoff.abandon()
        raise


# -- handlers ---------------------------------------------------------------------------

async def _activate(request: web.Request) -> web.Response:
    await request.read()
    return _json(request.app[_PLUGIN].activate())


async def _call(request: web.Request) -> web.Response:
    """A JSON method: ``Init``, ``Create``, ``Get`` ..."""
    method = request.match_info["method"]
    plugin = request.app[_PLUGIN]
    handler = plugin.methods.get(method)
    if handler is None:
        return _json({"Err": f"unknown method GraphDriver.{method}"}, 404)
    started = time.monotonic()
    try:
        body = await _read_json(request)
        if method == "Get":
            answer = await _in_thread_undoable(request, handler, body, lambda _: plugin.put(body))
        else:
            answer = await _in_thread(request, handler, body)
    except RequestError as exc:
        return _json({"Err": str(exc)}, 400)
    except Exception as exc:
        return _json(_failure(method, exc))
    log.debug("%s %s: %.0f ms", method, body.get("ID", ""),
              (time.monotonic() - started) * 1000)
    return _json(answer)


async def _diff(request: web.Request) -> web.StreamResponse:
    """The layer's tar as the answer body, produced as it is sent."""
    plugin = request.app[_PLUGIN]
    try:
        body = await _read_json(request)
        log.debug("Diff %s: starting", body.get("ID", ""))
        stream = await _in_thread_undoable(request, plugin.diff, body, lambda s: s.close())
    except RequestError as exc:
        return _json({"Err": str(exc)}, 400)
    except Exception as exc:
        # dockerd takes any 200 answer of Diff for the tar itself: an error must not be 200.
        return _json(_failure("Diff", exc), 500)
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while chunk := await _in_thread(request, stream.read, CHUNK):
            await response.write(chunk)
        await response.write_eof()
        log.debug("Diff %s: sent", body.get("ID", ""))
    except BaseException as exc:
        # Mid-stream there is no status left to set: cut the connection before the
        # closing chunk, so that dockerd reads a broken stream, never a short tar.
        if not isinstance(exc, ConnectionError | asyncio.CancelledError):
            log.error("Diff %s failed while streaming: %s", body.get("ID", ""),
                      _error_text(exc))
        if request.transport is not None:
            request.transport.abort()
        raise
    finally:
        await _in_thread(request, stream.close)
    return response


class BodyReader(io.RawIOBase):
    """A blocking, readable view of a request body that the event loop receives: for a
    worker thread. Each ``readinto`` waits for what the socket has brought so far."""

    def __init__(self, content: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._content = content  # aiohttp.StreamReader
        self._loop = loop

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        future = asyncio.run_coroutine_threadsafe(self._content.read(len(view)), self._loop)
        try:
            data: bytes = future.result()
        except Exception as exc:  # dockerd went away mid-body: the apply is undone
            raise OSError(errno.ECONNRESET, f"the layer's tar broke off: {exc}") from exc
        view[: len(data)] = data
        return len(data)


async def _apply_diff(request: web.Request) -> web.Response:
    plugin = request.app[_PLUGIN]
    id, parent = request.query.get("id", ""), request.query.get("parent", "")
    reader = io.BufferedReader(BodyReader(request.content, asyncio.get_running_loop()), CHUNK)
    started = time.monotonic()
    log.debug("ApplyDiff %s: starting", id)
    try:
        answer = await _in_thread(request, plugin.apply_diff, id, parent, reader)
    except RequestError as exc:
        return _json({"Err": str(exc)}, 400)
    except Exception as exc:
        return _json(_failure("ApplyDiff", exc))
    log.debug("ApplyDiff %s: %.0f ms", id, (time.monotonic() - started) * 1000)
    return _json(answer)


def make_app(plugin: GraphDriverPlugin, pool: concurrent.futures.ThreadPoolExecutor,
             ) -> web.Application:
    app = web.Application()
    app[_PLUGIN] = plugin
    app[_POOL] = pool
    app.router.add_post("/Plugin.Activate", _activate)
    app.router.add_post("/GraphDriver.Diff", _diff)
    app.router.add_post("/GraphDriver.ApplyDiff", _apply_diff)
    app.router.add_post("/GraphDriver.{method}", _call)
    return app


# -- the socket -------------------------------------------------------------------------

class SocketInUseError(PluginError):
    """Another process serves the plugin socket."""


def _claim(path: str) -> None:
    """Make ``path`` free for our socket: a socket left by a plugin that died is removed;
    one that answers, or anything that is not a socket, is an error."""
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PluginError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:
            raise SocketInUseError(f"another process already serves {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _release(path: str, ino: int) -> None:
    """Remove our socket, unless another plugin has put its own there meanwhile."""
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_ino == ino:
            os.unlink(path)


async def _serve(plugin: GraphDriverPlugin, path: str, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="driver")
    # A body is read into a buffer of read_bufsize (aiohttp stops reading the socket
    # while it is full): 64 KiB by default made ApplyDiff hop threads 16 times a MiB.
    runner = web.AppRunner(make_app(plugin, pool), access_log=None, handle_signals=False,
                           read_bufsize=CHUNK)
    await runner.setup()
    try:
        _claim(path)
        site = web.UnixSite(runner, path)
        await site.start()
        ino = os.lstat(path).st_ino
        try:
            log.info("serving the graph driver %s on %s", plugin.name, path)
            ready()
            await stop.wait()
            log.info("stopping: no new calls; waiting for the calls under way")
        finally:
            _release(path, ino)  # dockerd finds no plugin from now on
    finally:
        await runner.cleanup()  # waits for handlers under way
        pool.shutdown(wait=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def serve(plugin: GraphDriverPlugin, path: str,
          ready: Callable[[], None] = lambda: None) -> None:
    """Serve ``plugin`` on the unix socket ``path`` until SIGTERM or SIGINT, then let the
    calls under way finish, remove the socket and release the store."""
    try:
        asyncio.run(_serve(plugin, path, ready))
    finally:
        plugin.shutdown()
