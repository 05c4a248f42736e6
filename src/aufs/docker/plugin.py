"""Docker's graph-driver plugin protocol, method by method, over :class:`aufs.Driver`.

dockerd (``daemon/graphdriver/proxy.go``) POSTs one JSON object per call to
``/GraphDriver.<Method>`` and reads one JSON object back; an error is ``{"Err": "..."}``.
Two calls move tar streams instead: ``Diff`` answers with the tar, ``ApplyDiff`` sends it
as the request body (``?id=&parent=`` in the query). This module knows the methods and
their fields; :mod:`aufs.docker.server` knows HTTP. Every method here blocks (mounts,
extraction) and is called from a worker thread; the store lock orders them.

dockerd calls ``Init`` once when it starts and never again while it runs, also when the
plugin restarts behind its back (after a crash, an upgrade): the ``Home`` it sent is kept
in a small state file under ``/run`` so that a restarted plugin serves the same store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import IO, Any

import aufs
from aufs import graphdriver
from aufs._sys.files import write_atomic
from aufs.docker import adopt

__all__ = ["DEFAULT_NAME", "STATE_DIR", "GraphDriverPlugin", "PluginError", "RequestError"]

# dockerd 20.10 looks its built-in drivers up before plugins: a plugin named "aufs"
# would never be asked (dockerd would start its own aufs driver, or fail without AUFS).
DEFAULT_NAME = "aufs-plugin"
STATE_DIR = "/run/aufs/docker-plugin"

log = logging.getLogger("aufs.docker")

Body = dict[str, Any]


class PluginError(Exception):
    """A call that cannot be served (answered as ``{"Err": ...}``)."""


class RequestError(PluginError):
    """A request dockerd would never send: bad JSON, a missing or mistyped field."""


def _text(body: Body, key: str, *, required: bool = False) -> str:
    value = body.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RequestError(f"{key} must be a string, not {type(value).__name__}")
    if required and not value:
        raise RequestError(f"{key} is missing")
    return value


class GraphDriverPlugin:
    """The plugin's state: the driver opened by ``Init`` (or from ``--root``)."""

    def __init__(self, name: str = DEFAULT_NAME, *, root: str | None = None,
                 engine: str | None = None, state_dir: str = STATE_DIR) -> None:
        self.name = name
        self._root = root
        self._engine = engine
        self._state_file = os.path.join(state_dir, f"{name}.json")
        self._driver: aufs.Driver | None = None
        self._init_lock = threading.Lock()
        self.methods: dict[str, Callable[[Body], Body]] = {
            "Init": self.init,
            "Create": self.create,
            "CreateReadWrite": self.create,  # aufs makes no difference (nor does Docker's)
            "Remove": self.remove,
            "Get": self.get,
            "Put": self.put,
            "Exists": self.exists,
            "Status": self.status,
            "GetMetadata": self.get_metadata,
            "Cleanup": self.cleanup,
            "Changes": self.changes,
            "DiffSize": self.diff_size,
            "Capabilities": self.capabilities,
        }

    # -- the store ----------------------------------------------------------------------
    @property
    def driver(self) -> aufs.Driver:
        """The store: opened by Init, or (plugin restarted) from ``--root`` or the Home
        the last Init sent."""
        with self._init_lock:
            if self._driver is None:
                home, opts = self._remembered()
                if self._root is None and home is None:
                    raise PluginError("the plugin has no store yet: dockerd has not called "
                                      "GraphDriver.Init (start the plugin before dockerd)")
                self._driver = self._open(self._root or str(home), opts)
                log.info("opened the store %s (engine %s)", self._driver.root,
                         self._driver.engine.name)
            return self._driver

    def _open(self, root: str, opts: list[str]) -> aufs.Driver:
        d = aufs.init(root, self._options(opts))
        # dockerd keeps the tar-split of every layer it applies; ours would only cost a
        # hash of every byte (15% of a docker commit).
        d.keep_tar_split = False
        return d

    def _options(self, opts: list[str]) -> list[str]:
        engine = [f"aufs.engine={self._engine}"] if self._engine else []
        return [*engine, *opts]  # dockerd's --storage-opt come last and win

    def _remembered(self) -> tuple[str | None, list[str]]:
        try:
            with open(self._state_file, encoding="utf-8") as f:
                state = json.load(f)
            return str(state["Home"]), [str(o) for o in state.get("Opts") or []]
        except (OSError, ValueError, KeyError, TypeError):
            return None, []

    def _remember(self, home: str, opts: list[str]) -> None:
        os.makedirs(os.path.dirname(self._state_file), 0o700, exist_ok=True)
        write_atomic(self._state_file, json.dumps({"Home": home, "Opts": opts}).encode())

    def forget(self) -> None:
        """Drop the remembered Home (the plugin is being taken down for good)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_file)

    # -- the methods --------------------------------------------------------------------
    def activate(self) -> Body:
        return {"Implements": ["GraphDriver"]}

    def init(self, body: Body) -> Body:
        home = _text(body, "Home", required=True)
        opts = body.get("Opts") or []
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise RequestError("Opts must be a list of strings")
        if body.get("UIDMaps") or body.get("GIDMaps"):
            raise PluginError(f"{self.name} does not support user namespace remapping "
                              "(--userns-remap)")
        data = os.path.dirname(os.path.abspath(home))
        if adopt.pending(data) is not None:
            raise PluginError(f"an adoption of {data} was interrupted: run aufs docker-adopt "
                              f"--data-root {data} --name {self.name} (or with --undo) before "
                              "starting dockerd")
        if self._root is None and not os.path.lexists(home) and adopt.is_legacy(data):
            # A new empty store here would hide the old one and block its adoption.
            raise PluginError(f"{data} holds the images of Docker's aufs driver: stop dockerd "
                              f"and run aufs docker-adopt --data-root {data} --name {self.name}")
        root = self._root or home
        with self._init_lock:
            self._driver = self._open(root, opts)
            self._remember(home, opts)
        log.info("Init: store %s (engine %s), Home %s", self._driver.root,
                 self._driver.engine.name, home)
        return {}

    def create(self, body: Body) -> Body:
        if body.get("StorageOpt"):
            raise PluginError(f"--storage-opt is not supported for {self.name}")
        self.driver.create(_text(body, "ID"), _text(body, "Parent"))
        return {}

    def remove(self, body: Body) -> Body:
        self.driver.remove(_text(body, "ID"))
        return {}

    def get(self, body: Body) -> Body:
        return {"Dir": self.driver.get(_text(body, "ID"), _text(body, "MountLabel"))}

    def put(self, body: Body) -> Body:
        self.driver.put(_text(body, "ID"))
        return {}

    def exists(self, body: Body) -> Body:
        return {"Exists": self.driver.exists(_text(body, "ID"))}

    def status(self, body: Body) -> Body:
        return {"Status": [[k, v] for k, v in self.driver.status()]}

    def get_metadata(self, body: Body) -> Body:
        """overlay2's names, which tools read from ``docker inspect``: UpperDir holds
        the layer's own files, LowerDir its parents' (nearest first), MergedDir the
        union once mounted."""
        d = self.driver
        id = _text(body, "ID")
        chain = d.parents(id)
        meta = {"UpperDir": d.layout.diff(id), "MergedDir": d.layout.mnt(id)}
        if chain:
            meta["LowerDir"] = ":".join(d.layout.diff(p) for p in chain)
        return {"Metadata": meta}

    def cleanup(self, body: Body) -> Body:
        self.driver.cleanup()
        return {}

    def changes(self, body: Body) -> Body:
        """``docker diff``: as dockerd's own overlay2 and fuse-overlayfs drivers answer it
        (the naive comparison of the two mounted trees), not by the aufs walk of the
        layer's own files, which would also list a file copied up unchanged (the target
        of a new hard link) and leave out the directory of a changed file."""
        naive = graphdriver.NaiveDiffDriver(self.driver)
        found = naive.changes(_text(body, "ID"), _text(body, "Parent"))
        return {"Changes": [{"Path": c.path, "Kind": int(c.kind)} for c in found]}

    def diff_size(self, body: Body) -> Body:
        return {"Size": self.driver.diff_size(_text(body, "ID"), _text(body, "Parent"))}

    def capabilities(self, body: Body) -> Body:
        # Our tars are not the bytes dockerd applied: it must keep its tar-split data.
        return {"Capabilities": {"ReproducesExactDiffs": False}}

    def diff(self, body: Body) -> IO[bytes]:
        return self.driver.diff(_text(body, "ID"), _text(body, "Parent"))

    def apply_diff(self, id: str, parent: str, stream: IO[bytes]) -> Body:
        if not id:
            raise RequestError("the id query parameter is missing")
        return {"Size": self.driver.apply_diff(id, parent, stream)}

    # -- shutdown -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """On SIGTERM: unmount everything if no layer is in use (dockerd stopped, or
        called Cleanup); else keep the unions dockerd still holds — running containers
        stand on them, and a restarted plugin takes them over (counts are on disk)."""
        d = self._driver
        if d is None:
            return
        held = [i for i in d.ids() if d.refcount(i) > 0]
        if not held:
            d.cleanup()
            return
        log.warning("keeping %d layer(s) mounted that dockerd still uses: %s", len(held),
                    ", ".join(i[:12] for i in held[:5]))
        d.close()
