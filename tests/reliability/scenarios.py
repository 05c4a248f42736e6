"""The operations that the crash trials kill, with how each sets the store up and checks it."""

from __future__ import annotations

import io
import os
import random
import tarfile
import time
from typing import Any

import aufs
from tests.reliability import invariants
from tests.reliability.crashlib import KillRecord, Scenario


def fill(path: str, files: int, rng: random.Random, size: int = 512) -> None:
    """Put ``files`` small files in a few subdirectories of ``path``."""
    for n in range(files):
        sub = os.path.join(path, f"d{n % 4}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{n}"), "wb") as f:
            f.write(rng.randbytes(size))


def remove_all(d: aufs.Driver) -> None:
    """Remove every layer, children before parents."""
    while ids := d.ids():
        parents = {c[0] for c in (d.parents(i) for i in ids) if c}
        for i in ids:
            if i not in parents:
                d.remove(i)


# -- init ------------------------------------------------------------------------------

def _prepare_init(d: aufs.Driver, trial: int, rng: random.Random) -> dict[str, Any]:
    if not d.exists("base"):
        d.create("base")
        d.create("top", "base")
    return {}


INIT = Scenario("init", 0.12, _prepare_init)


# -- create ----------------------------------------------------------------------------

def _prepare_create(d: aufs.Driver, trial: int, rng: random.Random) -> dict[str, Any]:
    if len(d.ids()) > 60:
        remove_all(d)
    return {"tag": f"t{trial}"}


CREATE = Scenario("create", 0.12, _prepare_create)


# -- remove ----------------------------------------------------------------------------

def _prepare_remove(d: aufs.Driver, trial: int, rng: random.Random) -> dict[str, Any]:
    for chain in range(3):
        parent = ""
        for depth in range(3):
            layer_id = f"r{chain}-{depth}"
            if not d.exists(layer_id):
                d.create(layer_id, parent)
                fill(d.layout.diff(layer_id), 24, rng)
            parent = layer_id
    return {"mount_first": 0.3}


def _verify_remove(d: aufs.Driver, rec: KillRecord, args: dict[str, Any]) -> list[str]:
    """A layer still there still has all its files."""
    problems = []
    for i in d.ids():
        names = [n for _, _, fs in os.walk(d.layout.diff(i)) for n in fs]
        if len(names) != 24:
            problems.append(f"layer {i} survived with {len(names)} of its 24 files")
    return problems


REMOVE = Scenario("remove", 0.06, _prepare_remove, _verify_remove)


# -- get / put -------------------------------------------------------------------------

GETPUT_LAYERS = (("g0", ""), ("g1", "g0"), ("g2", "g1"), ("h0", ""), ("h1", "h0"),
                 ("h2", "g0"))


def _prepare_getput(d: aufs.Driver, trial: int, rng: random.Random) -> dict[str, Any]:
    for layer_id, parent in GETPUT_LAYERS:
        if not d.exists(layer_id):
            d.create(layer_id, parent)
            fill(d.layout.diff(layer_id), 3, rng)
    return {"ids": [i for i, _ in GETPUT_LAYERS]}


GETPUT = Scenario("getput", 0.15, _prepare_getput)

# A chain past one page of AUFS mount options (about 40 branches with these paths): the
# AUFS engine builds it by a first mount and append: remounts, and a kill between them
# leaves a union with only some branches, which must never be handed out.
DEEP = 60


def _prepare_deep(d: aufs.Driver, trial: int, rng: random.Random) -> dict[str, Any]:
    parent = ""
    for i in range(DEEP):
        layer = f"deep{i:03d}"
        if not d.exists(layer):
            d.create(layer, parent)
            with open(os.path.join(d.layout.diff(layer), f"f{i:03d}"), "wb"):
                pass
        parent = layer
    return {"ids": [f"deep{DEEP - 1:03d}", f"deep{DEEP // 2:03d}"]}


def _verify_deep(d: aufs.Driver, rec: KillRecord, args: dict[str, Any]) -> list[str]:
    """Every layer a get hands out after the kill shows the files of its whole chain."""
    problems = []
    for layer in args["ids"]:
        layers = int(layer[len("deep"):]) + 1
        path = d.get(layer)
        try:
            seen = {n for n in os.listdir(path) if n.startswith("f")}
        finally:
            d.put(layer)
        if seen != {f"f{i:03d}" for i in range(layers)}:
            problems.append(f"get {layer} after the kill shows the files of {len(seen)} "
                            f"of its {layers} layers")
    return problems


GETPUT_DEEP = Scenario("getput", 0.3, _prepare_deep, _verify_deep)


# -- apply_diff ------------------------------------------------------------------------

def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 1_600_000_000,
              mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, mode
    tar.addfile(info, io.BytesIO(data))


def _add(tar: tarfile.TarFile, name: str, kind: bytes, *, link: str = "",
         mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_600_000_000
    tar.addfile(info)


def before_tar(rng: random.Random) -> bytes:
    """What the layer holds before the apply that gets killed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(40):
            _add_file(tar, f"old/f{n}", rng.randbytes(300))
        _add(tar, "keep", tarfile.DIRTYPE)
        _add_file(tar, "keep/data", b"kept\n")
        _add_file(tar, "gone", b"to be deleted\n")
        _add(tar, "opaque", tarfile.DIRTYPE)
        _add_file(tar, "opaque/hidden", b"hidden later\n")
    return buf.getvalue()


def after_tar(rng: random.Random, files: int = 240) -> bytes:
    """The apply that gets killed: many files, whiteouts, an opaque dir, links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(12):
            _add(tar, f"new{n}", tarfile.DIRTYPE)
        for n in range(files):
            _add_file(tar, f"new{n % 12}/file{n}", rng.randbytes(rng.randrange(64, 2048)))
        _add_file(tar, "old/f3", b"replaced\n")
        _add_file(tar, ".wh.gone", b"")
        _add_file(tar, "old/.wh.f7", b"")
        _add(tar, "opaque", tarfile.DIRTYPE)
        _add_file(tar, "opaque/.wh..wh..opq", b"")
        _add_file(tar, "opaque/fresh", b"fresh\n")
        _add(tar, "link", tarfile.SYMTYPE, link="/etc/passwd")
        _add(tar, "hard", tarfile.LNKTYPE, link="new1/file1")
    return buf.getvalue()


class ApplyScenario:
    """Layer ``a<trial>`` (child of ``P``) holds ``before``; the child applies ``after``.

    Afterwards the layer must equal either its snapshot from before (exactly) or a
    reference layer that got the same two applies without a kill (directory times aside).
    """

    def __init__(self, workdir: str, seed: int) -> None:
        rng = random.Random(f"{seed}/apply-content")
        self.before = before_tar(rng)
        self.after_path = os.path.join(workdir, "after.tar")
        with open(self.after_path, "wb") as f:
            f.write(after_tar(rng))
        self.reference: dict[str, invariants.Node] | None = None
        self.snapshots: dict[str, dict[str, invariants.Node]] = {}
        self.apply_seconds = 0.0
        self.scenario = Scenario("apply", 0.2, self.prepare, self.verify)

    def _reset(self, d: aufs.Driver, layer_id: str) -> None:
        if not d.exists("P"):
            d.create("P")
            fill(d.layout.diff("P"), 8, random.Random(0))
        if d.exists(layer_id):
            d.remove(layer_id)
        d.create(layer_id, "P")
        d.apply_diff(layer_id, "P", io.BytesIO(self.before))

    def prepare(self, d: aufs.Driver, trial: int, rng: random.Random) -> dict[str, Any]:
        if self.reference is None:
            times = []
            for _ in range(2):  # the first one is slower (imports, cold caches)
                self._reset(d, "ref")
                t0 = time.monotonic()
                with open(self.after_path, "rb") as f:
                    d.apply_diff("ref", "P", f)
                times.append(time.monotonic() - t0)
            self.apply_seconds = min(times)
            self.scenario.max_delay = self.apply_seconds
            self.reference = invariants.without_dir_times(invariants.snapshot(d.layout.diff("ref")))
        for old in d.ids():
            if old.startswith("a"):
                d.remove(old)
        layer_id = f"a{trial}"
        self._reset(d, layer_id)
        self.snapshots[layer_id] = invariants.snapshot(d.layout.diff(layer_id))
        return {"id": layer_id, "parent": "P", "tar": self.after_path}

    def verify(self, d: aufs.Driver, rec: KillRecord, args: dict[str, Any]) -> list[str]:
        seen = rec.duration("apply")
        if seen is not None:  # the child's apply finished first: aim the kills earlier
            self.scenario.max_delay = min(self.scenario.max_delay, 0.9 * seen)
        layer_id = args["id"]
        before = self.snapshots.pop(layer_id)
        if not d.exists(layer_id):
            return [f"layer {layer_id} vanished"]
        now = invariants.snapshot(d.layout.diff(layer_id))
        if now == before:
            return []
        assert self.reference is not None
        if invariants.without_dir_times(now) == self.reference:
            return []
        return [f"layer {layer_id} is neither as before ("
                f"{invariants.snapshot_diff(before, now)}) nor as after ("
                f"{invariants.snapshot_diff(self.reference, invariants.without_dir_times(now))})"]
