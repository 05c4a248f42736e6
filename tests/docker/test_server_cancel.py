"""A driver call whose handler aiohttp cancels (its shutdown timeout ran out while the
call was still in its worker thread) must not leave behind what dockerd never learnt of:
a ``Get``'s reference (dockerd would never ``Put`` it) or a ``Diff``'s open stream.

A real plugin object on a real store and a real aiohttp server on a unix socket; the
driver call is held in its worker until the server has given up on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aufs.docker.plugin import GraphDriverPlugin
from aufs.docker.server import make_app
from tests.conftest import require_engine
from tests.leaks import mounts_below

pytestmark = [pytest.mark.root]


def _held(fn: Callable[[Any], Any], entered: threading.Event,
          release: threading.Event) -> Callable[[Any], Any]:
    def call(body: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return fn(body)
    return call


async def _cancelled_call(plugin: GraphDriverPlugin, sock: str, path: str,
                          entered: threading.Event, release: threading.Event) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(4)
    runner = web.AppRunner(make_app(plugin, pool), shutdown_timeout=0.2)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as session:
        call = asyncio.create_task(session.post(f"http://plugin{path}",
                                                data=json.dumps({"ID": "top"})))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        await runner.cleanup()  # waits 0.2 s for the call, then cancels its handler
        release.set()
        with pytest.raises(aiohttp.ClientError):
            await call
    pool.shutdown(wait=True)  # the worker finishes the driver call, then undoes it


@pytest.mark.parametrize("method", ["Get", "Diff"])
def test_a_call_the_server_gave_up_on_is_undone(tmp_path: Path, method: str) -> None:
    require_engine("overlay")
    plugin = GraphDriverPlugin("aufs-test", root=str(tmp_path / "store"), engine="overlay",
                               state_dir=str(tmp_path / "state"))
    d = plugin.driver
    d.create("base")
    d.create("top", "base")
    entered, release = threading.Event(), threading.Event()
    closed: list[bool] = []
    if method == "Get":
        plugin.methods["Get"] = _held(plugin.get, entered, release)
    else:
        real_diff = plugin.diff

        def diff(body: Any) -> Any:
            stream = real_diff(body)
            close = stream.close

            def recorded() -> None:
                closed.append(True)
                close()
            stream.close = recorded  # type: ignore[method-assign]
            return stream
        plugin.diff = _held(diff, entered, release)  # type: ignore[assignment]
    try:
        asyncio.run(_cancelled_call(plugin, str(tmp_path / "p.sock"),
                                    f"/GraphDriver.{method}", entered, release))
        if method == "Get":
            assert d.refcount("top") == 0
            assert not mounts_below(tmp_path / "store" / "mnt")
        else:
            assert closed == [True]
    finally:
        release.set()
        d.cleanup()
