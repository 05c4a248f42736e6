"""``aufs docker-adopt``: a data root of Docker's aufs driver, opened under the plugin.

dockerd keys what it keeps per storage driver by the driver's name: the store is
``DATA/<name>/`` (the plugin's ``Home``), image and layer metadata are under
``DATA/image/<name>/`` (imagedb, layerdb, repositories.json), and ``restore`` skips a
container whose ``config.v2.json`` names another ``"Driver"``. The layers themselves —
``layers/``, ``diff/``, ``mnt/`` — are already in our store's format. Adoption renames
three things from ``aufs`` to the plugin's name and touches no layer data:

1. ``DATA/aufs`` -> ``DATA/NAME`` (a symlink ``NAME -> aufs`` where ``DATA/aufs`` is a
   mount point and cannot be renamed);
2. ``DATA/image/aufs`` -> ``DATA/image/NAME``;
3. each ``containers/<id>/config.v2.json``: ``"Driver": "aufs"`` -> ``"NAME"`` (a new
   file renamed over the old one).

``--undo`` is the same three steps from NAME back to ``aufs``. A journal,
``DATA/.aufs-adopt.json``, is written (and synced) before the first step and removed after
the last; every step is a rename and is skipped when already done, so a crash anywhere
leaves a state that the same command — or ``--undo`` — finishes. The plugin refuses to
open a store whose data root still has a journal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass, field

from aufs._sys import mountinfo, safefs
from aufs._sys.files import write_atomic
from aufs.errors import StoreCorruptError
from aufs.store.chain import read_store_file

__all__ = ["JOURNAL", "LEGACY", "AdoptError", "Report", "is_legacy", "pending", "run"]

LEGACY = "aufs"  # the name Docker's own aufs driver keeps its data under
JOURNAL = ".aufs-adopt.json"
_DEFAULT_DATA_ROOT = "/var/lib/docker"


class AdoptError(Exception):
    """The data root cannot be adopted (or given back) as it is."""


@dataclass
class Report:
    data_root: str
    source: str
    target: str
    store: str = ""           # "renamed", "linked", "unlinked" or "already done"
    images: str = ""          # "renamed" or "already done"
    containers: list[str] = field(default_factory=list)  # ids whose config changed
    finished_interrupted: bool = False

    def as_json(self) -> dict[str, object]:
        return {"data_root": self.data_root, "from": self.source, "to": self.target,
                "store": self.store, "images": self.images, "containers": self.containers,
                "finished_interrupted": self.finished_interrupted}

    def lines(self) -> list[str]:
        out = []
        if self.finished_interrupted:
            out.append("finished an interrupted run")
        out.append(f"store: {self.data_root}/{self.source} -> {self.target} ({self.store})")
        out.append(f"images: image/{self.source} -> image/{self.target} ({self.images})")
        out.append(f"containers: {len(self.containers)} moved to driver {self.target}")
        if self.target != LEGACY:
            out.append(f"next: aufs docker-plugin --name {self.target}, then dockerd "
                       f"--experimental -s {self.target} --data-root {self.data_root}")
        else:
            out.append("next: dockerd -s aufs (needs a kernel with AUFS)")
        return out


def pending(data_root: str) -> dict[str, str] | None:
    """The journal of an unfinished adoption of ``data_root``, if there is one."""
    try:  # never through a symlink, never waiting on a FIFO, bounded
        raw = json.loads(read_store_file(os.path.join(data_root, JOURNAL), 1 << 16,
                                         "adoption journal"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, StoreCorruptError) as exc:
        raise AdoptError(f"{data_root}/{JOURNAL} is unreadable: {exc}") from exc
    if not isinstance(raw, dict) or not {"from", "to"} <= raw.keys():
        raise AdoptError(f"{data_root}/{JOURNAL} is not an adoption journal")
    return {"from": str(raw["from"]), "to": str(raw["to"])}


def is_legacy(data_root: str) -> bool:
    """Does ``data_root`` hold what Docker's aufs driver wrote (its store and images)?"""
    return (os.path.isdir(os.path.join(data_root, LEGACY, "layers"))
            and os.path.isdir(os.path.join(data_root, "image", LEGACY)))


def run(data_root: str, name: str, *, undo: bool = False) -> Report:
    """Adopt ``data_root`` for the plugin ``name`` (or give it back to aufs)."""
    if not name or "/" in name or name in (".", "..", LEGACY):
        raise AdoptError(f"invalid plugin name {name!r} (and it cannot be {LEGACY!r})")
    data = os.path.realpath(data_root)
    if not os.path.isdir(data):
        raise AdoptError(f"no such data root: {data_root}")
    source, target = (name, LEGACY) if undo else (LEGACY, name)
    journal = pending(data)
    if journal is not None and {journal["from"], journal["to"]} != {LEGACY, name}:
        raise AdoptError(f"an interrupted run between {journal['from']} and {journal['to']} "
                         f"is pending in {data}: finish it with --name "
                         f"{journal['to'] if journal['to'] != LEGACY else journal['from']}")
    _refuse_running(data, source, target)
    report = Report(data, source, target, finished_interrupted=journal is not None)
    _check(data, source, target, resuming=journal is not None)
    _write_journal(data, source, target)
    report.store = _move_store(data, source, target)
    report.images = _move(os.path.join(data, "image", source),
                          os.path.join(data, "image", target), required=False)
    report.containers = _retag_containers(data, source, target)
    os.unlink(os.path.join(data, JOURNAL))
    _sync_dir(data)
    return report


# -- checks -----------------------------------------------------------------------------

def _refuse_running(data: str, *names: str) -> None:
    """dockerd must be stopped: no container mounted below the store, no dockerd on it."""
    for n in names:
        mnt = os.path.realpath(os.path.join(data, n, "mnt"))
        busy = list(mountinfo.mounts_under(mnt))
        if busy:
            raise AdoptError(f"{busy[0].mountpoint} is mounted: stop dockerd (and the "
                             "plugin's containers) first")
    for pid in _dockerd_pids():
        if _data_root_of(pid) == data:
            raise AdoptError(f"dockerd (pid {pid}) is running on {data}: stop it first")


def _dockerd_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/comm", "rb") as f:
            if f.read().strip() == b"dockerd":
                pids.append(int(entry))
    return pids


def _data_root_of(pid: int) -> str | None:
    """The ``--data-root`` (or old ``--graph``/``-g``) of a dockerd; the default when it
    gives none (a data-root set in daemon.json is not seen)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    root = _DEFAULT_DATA_ROOT
    for i, arg in enumerate(argv):
        for flag in ("--data-root", "--graph", "-g"):
            if arg == flag and i + 1 < len(argv):
                root = argv[i + 1]
            elif arg.startswith(flag + "="):
                root = arg.split("=", 1)[1]
    return os.path.realpath(root)


def _check(data: str, source: str, target: str, *, resuming: bool) -> None:
    src, dst = os.path.join(data, source), os.path.join(data, target)
    has_src, has_dst = os.path.lexists(src), os.path.lexists(dst)
    if has_src and has_dst and not (_links_to(dst, src) or _links_to(src, dst)):
        raise AdoptError(f"both {src} and {dst} exist: move {dst} away first (dockerd was "
                         f"started with -s {target} before?)")
    if not has_src and not has_dst:
        raise AdoptError(f"{src} does not exist: not a data root of the {source} driver")
    if not resuming and (not has_src or _links_to(dst, src)):
        raise AdoptError(f"nothing to do: {dst} is already the store (done before)")
    store = os.path.realpath(src if has_src else dst)
    for sub in ("layers", "diff"):
        if not os.path.isdir(os.path.join(store, sub)):
            raise AdoptError(f"{store} has no {sub}/: not a store of Docker's aufs driver")
    isrc, idst = (os.path.join(data, "image", n) for n in (source, target))
    if os.path.lexists(isrc) and os.path.lexists(idst):
        raise AdoptError(f"both {isrc} and {idst} exist: move {idst} away first")


def _links_to(link: str, path: str) -> bool:
    return os.path.islink(link) and os.path.realpath(link) == os.path.realpath(path)


# -- the steps --------------------------------------------------------------------------

def _write_journal(data: str, source: str, target: str) -> None:
    write_atomic(os.path.join(data, JOURNAL),
                 json.dumps({"from": source, "to": target, "version": 1}).encode())
    _sync_dir(data)


def _move_store(data: str, source: str, target: str) -> str:
    src, dst = os.path.join(data, source), os.path.join(data, target)
    if _links_to(dst, src):  # adopted by a link before
        return "already done"
    if _links_to(src, dst):  # undo of an adoption by a link
        os.unlink(src)
        _sync_dir(data)
        return "unlinked"
    try:
        return _move(src, dst, required=True)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
    # DATA/aufs is a mount point of its own: the plugin's Home becomes a link to it
    # (the store opens its real path).
    os.symlink(source, dst)
    _sync_dir(data)
    return "linked"


def _move(src: str, dst: str, *, required: bool) -> str:
    if not os.path.lexists(src):
        if os.path.lexists(dst) or not required:
            return "already done" if os.path.lexists(dst) else "absent"
        raise AdoptError(f"{src} is missing")
    _rename(src, dst)
    _sync_dir(os.path.dirname(dst))
    return "renamed"


def _rename(src: str, dst: str) -> None:
    os.rename(src, dst)


def _retag_containers(data: str, source: str, target: str) -> list[str]:
    changed = []
    containers = os.path.join(data, "containers")
    with contextlib.suppress(FileNotFoundError):
        for cid in sorted(os.listdir(containers)):
            path = os.path.join(containers, cid, "config.v2.json")
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise AdoptError(f"{path} is unreadable: {exc}") from exc
            if not isinstance(config, dict):
                raise AdoptError(f"{path} is not a container config (no JSON object)")
            driver = config.get("Driver")
            # dockerd restores a container without a Driver under aufs only.
            if driver == source or (source == LEGACY and not driver):
                config["Driver"] = target
                write_atomic(path, json.dumps(config, separators=(",", ":")).encode())
                changed.append(cid)
    return changed


def _sync_dir(path: str) -> None:
    fd = os.open(path, safefs.O_ROOT)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
