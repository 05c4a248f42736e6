"""Finish what a crash left: ``*-removing`` leftovers, staging dirs, half-created layers.

Every id here comes from a file name, and a file name in the store is not trusted: it
is validated (:func:`aufs.store.layout.is_valid_id`) before it is joined into a path.
A marker ``layers/..-removing`` names no layer — it is reported and skipped, never
resolved to ``diff/..`` (the store root). Nothing here can stop ``init``: a leftover
that cannot be finished is reported (a warning on the ``aufs`` logger, and by
``aufs check``) and the rest of the store keeps working.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

from aufs._sys import mount as sysmount
from aufs._sys import mountinfo
from aufs._sys.files import rmtree
from aufs.store import staging
from aufs.store.layout import REMOVING_SUFFIX, Layout, is_valid_id

log = logging.getLogger("aufs")


@dataclass(slots=True)
class Recovery:
    """What :func:`finish` did: paths removed, and leftovers it reported and left."""

    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def removing_id(name: str) -> str | None:
    """The layer id a ``<id>-removing`` name stands for, or None if it names none."""
    if not name.endswith(REMOVING_SUFFIX):
        return None
    layer_id = name[: -len(REMOVING_SUFFIX)]
    return layer_id if is_valid_id(layer_id) else None


def finish(layout: Layout) -> Recovery:
    """Complete interrupted removals and drop abandoned staging.

    A layer exists iff ``layers/<id>`` does. ``layers/<id>-removing`` means a removal
    had started: its ``diff``, ``mnt`` and ``work`` dirs go too, then the marker.
    """
    done = Recovery()

    def remove(path: str) -> bool:
        try:
            rmtree(path)
        except Exception as exc:  # one leftover never stops init
            _report(done, f"{path}: cannot remove a leftover: {_why(exc)}")
            return False
        done.removed.append(path)
        return True

    # Every name is listed once a directory and tested by string first: init runs this
    # for every command that changes the store, whatever its size (10,000 layers: 20,000
    # lstats and path joins were 150 ms a command).
    listed = {top: _names(top) for top in (layout.mnt_dir, layout.diff_dir, layout.work_dir,
                                           layout.layers_dir)}
    for top in (layout.mnt_dir, layout.diff_dir, layout.work_dir):  # layers/: below
        for name in listed[top]:
            if name.endswith(REMOVING_SUFFIX):
                path = os.path.join(top, name)
                if removing_id(name) is None:
                    _report(done, f"{path}: names no layer (invalid id): left alone")
                else:
                    remove(path)
    for name in listed[layout.layers_dir]:
        if name.endswith(REMOVING_SUFFIX):
            path = os.path.join(layout.layers_dir, name)
            layer_id = removing_id(name)
            if layer_id is None:
                _report(done, f"{path}: names no layer (invalid id): left alone")
                continue
            gone = True
            if not os.path.lexists(layout.layers(layer_id)):  # not created anew since
                for leftover in (layout.mnt(layer_id), layout.diff(layer_id),
                                 layout.work(layer_id), layout.refs(layer_id)):
                    if os.path.lexists(leftover) and not remove(leftover):
                        gone = False
            if gone:  # else the marker stays, and the next init tries again
                remove(path)
        elif "~" in name:  # an unfinished atomic write
            remove(os.path.join(layout.layers_dir, name))
    # A create killed before it published layers/<id> leaves empty diff/<id> and mnt/<id>.
    # Only empty dirs go (rmdir): a non-empty diff/<id> may be a migration's moved layer.
    # (The names removed above are no ids: the listing before them is the one after.)
    published = set(listed[layout.layers_dir])
    for top in (layout.diff_dir, layout.mnt_dir):
        for name in listed[top]:
            if (name in published or name.endswith(REMOVING_SUFFIX)
                    or not is_valid_id(name)):
                continue  # a layer; reported above, or by aufs check
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                os.rmdir(path)
                done.removed.append(path)
    for name in _names(layout.staging_dir):
        path = layout.staging(name)
        if owner_alive(name):
            continue
        try:
            # A process killed mid-probe leaves its scratch union mounted in its staging dir.
            for entry in reversed(list(mountinfo.mounts_under(path))):
                with contextlib.suppress(OSError):
                    sysmount.unmount(entry.mountpoint)
        except Exception as exc:
            _report(done, f"{path}: cannot unmount what is left there: {_why(exc)}")
            continue
        remove(path)
    return done


def _report(done: Recovery, problem: str) -> None:
    done.problems.append(problem)
    log.warning("aufs: warning: %s (see aufs check)", problem)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _names(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(name: str) -> bool:
    """Staging names end in ``-<pid>``; keep those whose process still runs."""
    pid = staging.owner(name)
    if pid is None:
        return False
    return pid == os.getpid() or pid_alive(pid)
