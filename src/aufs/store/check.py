"""``aufs check``: what is wrong with a store, and ``--repair``: what can be fixed safely.

The check reads the store as it is — it runs no start-up recovery and mounts nothing —
under the store lock. It reports:

==================  ==========================================  ========================
kind                what                                        ``--repair``
==================  ==========================================  ========================
``layer-file``      ``layers/<id>`` damaged: not a regular      rewritten from the
                    file, not UTF-8, an invalid id, a cycle, a  direct parent's file if
                    missing parent, a chain that disagrees      line 1 names a sound
                    with the parent's own file                  parent; else left
``missing-diff``    a layer without ``diff/<id>``               left
``bad-diff``        ``diff/<id>`` neither a directory nor a     left
                    migration's symlink (to an absolute
                    ``…/graph/<id>/layer`` or
                    ``…/containers/<id>/rw``)
``bad-name``        an entry under ``layers/``, ``diff/``,      a marker file in
                    ``mnt/``, ``.aufs/refs/`` whose name is no  ``layers/`` or a refs
                    layer id (``..-removing``)                  file removed; else left
``removing``        a ``<id>-removing`` leftover of a removal   removed (it was being
                                                                deleted)
``temp``            an unfinished atomic write (``…~pid``)      removed
``staging``         a staging entry whose process is gone       removed
``incomplete``      ``.aufs/incomplete/<id>``: an import that   the half-applied layer
                    died while applying layer <id>              and marker removed if
                                                                no layer stands on it
``orphan-diff``     ``diff/<id>`` of no layer                   left (layer data)
``orphan-mnt``      ``mnt/<id>`` of no layer                    removed if an empty,
                                                                unmounted directory
``not-a-dir``       ``mnt/<id>``, ``.aufs/work/<id>`` or a      replaced by a directory
                    directory in ``.aufs/`` a symlink or a      (work, ``.aufs/``:
                    file                                        removed)
``refs``            ``refs/<id>`` disagrees with the mount      count set to what the
                    table (held but not mounted, mounted but    mount table says; a
                    not held, a count of no layer)              count of no layer removed
``store-dir``       ``mnt/``, ``diff/``, ``layers/``, ``.aufs/``  left
                    or a directory in it a symlink or a file
``meta``            ``.aufs/store.json`` unreadable, or a       left
                    conversion unfinished
==================  ==========================================  ========================

Nothing that holds layer data is ever removed by a repair (but a half-applied layer).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from aufs._sys import mountinfo
from aufs._sys.files import rmtree, write_atomic
from aufs.errors import DriverError, StoreCorruptError
from aufs.store import chain as chains
from aufs.store import dirs, incomplete, meta, recover, refs
from aufs.store.layers import format_chain
from aufs.store.layout import REMOVING_SUFFIX, Layout, is_valid_id
from aufs.store.store import Store

__all__ = ["Problem", "Report", "check", "repair"]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    path: str
    message: str
    layer: str = ""  # the layer it concerns, if any

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(slots=True)
class Report:
    root: str
    layers: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what --repair did
    left: list[Problem] = field(default_factory=list)  # what it could not fix

    def add(self, kind: str, path: str, message: str, layer: str = "") -> None:
        self.problems.append(Problem(kind, path, message, layer))

    def as_json(self) -> dict[str, object]:
        return {"root": self.root, "layers": self.layers, "clean": not self.problems,
                "problems": [asdict(p) for p in self.problems],
                "repaired": self.repaired, "left": [asdict(p) for p in self.left]}


def _own_names(path: str, damaged: set[str]) -> list[str]:
    """:func:`_names` of a directory in ``.aufs/``; [] if it is one of the ``damaged``
    (a symlink or no directory: reported by :func:`_check_own_dirs`, never looked into)."""
    return [] if path in damaged else _names(path)


def _names(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _rel(layout: Layout, path: str) -> str:
    return os.path.relpath(path, layout.root)


def check(layout: Layout) -> Report:
    """Every problem of the store at ``layout`` (the caller holds the store lock)."""
    report = Report(root=layout.root)
    for path, what in dirs.damaged(layout):
        report.add("store-dir", path, f"{_rel(layout, path)}: is {what}, not a directory "
                   f"of the store (the store is refused until it is one)")
    if report.problems:
        return report  # the rest would be read through it: what lies there is not ours
    damaged = _check_own_dirs(layout, report)
    layer_ids = _check_layers(layout, report)
    report.layers = len(layer_ids)
    mounted = {e.mountpoint for e in mountinfo.mounts_under(layout.mnt_dir)}
    for top, kind in ((layout.diff_dir, "orphan-diff"), (layout.mnt_dir, "orphan-mnt")):
        for name in _names(top):
            path = os.path.join(top, name)
            if name.endswith(REMOVING_SUFFIX):
                _removing(layout, report, path, name)
            elif not is_valid_id(name):
                report.add("bad-name", path, f"{_rel(layout, path)}: not a layer id")
            elif name not in layer_ids:
                what = "mounted, " if path in mounted else ""
                report.add(kind, path, f"{_rel(layout, path)}: {what}belongs to no layer",
                           name)
            elif top == layout.mnt_dir and (what := chains.not_a_dir(path)):
                report.add("not-a-dir", path, f"{_rel(layout, path)}: is {what}, not a "
                           f"directory (a mount there would follow it)", name)
    for name in _own_names(layout.work_dir, damaged):
        path = os.path.join(layout.work_dir, name)
        if name.endswith(REMOVING_SUFFIX):
            report.add("removing", path, f"{_rel(layout, path)}: left by an unfinished "
                       f"removal")
        elif what := chains.not_a_dir(path):
            report.add("not-a-dir", path, f"{_rel(layout, path)}: is {what}, not a "
                       f"directory (overlayfs would write where it leads)", name)
    _check_refs(layout, report, layer_ids, mounted, damaged)
    for name in _own_names(layout.staging_dir, damaged):
        if not recover.owner_alive(name):
            path = layout.staging(name)
            report.add("staging", path, f"{_rel(layout, path)}: left by a process that "
                       f"is gone")
    _check_incomplete(layout, report, damaged)
    _check_meta(layout, report)
    return report


def _check_own_dirs(layout: Layout, report: Report) -> set[str]:
    """Report the directories inside ``.aufs/`` that are none; return them."""
    damaged = dirs.damaged_own(layout)
    for path, what in damaged:
        report.add("not-a-dir", path, f"{_rel(layout, path)}: is {what}, not a "
                   f"directory of the store's own (aufs would write where it leads)")
    return {path for path, _ in damaged}


def _check_incomplete(layout: Layout, report: Report, damaged: set[str]) -> None:
    if layout.incomplete_dir in damaged:
        return
    for name in incomplete.listed(layout):
        path = os.path.join(layout.incomplete_dir, name)
        if not is_valid_id(name):
            report.add("bad-name", path, f"{_rel(layout, path)}: not a layer id")
            continue
        pid = incomplete.owner(layout, name)
        if pid is not None and not incomplete.alive(pid):
            report.add("incomplete", path, f"{_rel(layout, path)}: incomplete import of "
                       f"layer {name} (pid {pid} is gone)", name)


def _lstat_is(path: str, test: Callable[[int], bool]) -> bool:
    """Is ``path`` (not followed) of the kind ``test`` tells (False if missing)?"""
    try:
        return test(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _is_dir(path: str) -> bool:
    return _lstat_is(path, stat.S_ISDIR)


def _is_file(path: str) -> bool:
    return _lstat_is(path, stat.S_ISREG)


def _removing(layout: Layout, report: Report, path: str, name: str) -> None:
    """A ``<id>-removing`` leftover at ``path``: an unfinished removal, or a bad name."""
    if recover.removing_id(name) is None:
        report.add("bad-name", path, f"{_rel(layout, path)}: names no layer (invalid id)")
    else:
        report.add("removing", path, f"{_rel(layout, path)}: left by an unfinished removal")


def _check_layers(layout: Layout, report: Report) -> set[str]:
    """Problems of ``layers/``; returns the ids of the layers (damaged ones too)."""
    ids: set[str] = set()
    for name in _names(layout.layers_dir):
        path = os.path.join(layout.layers_dir, name)
        if name.endswith(REMOVING_SUFFIX):
            _removing(layout, report, path, name)
            continue
        if "~" in name:
            report.add("temp", path, f"{_rel(layout, path)}: an unfinished write")
            continue
        if not is_valid_id(name):
            report.add("bad-name", path, f"{_rel(layout, path)}: not a layer id")
            continue
        ids.add(name)
        try:
            chains.read_verified(layout, name)
        except StoreCorruptError as exc:
            report.add("layer-file", path, str(exc).replace(layout.root + "/", ""), name)
        except FileNotFoundError:
            ids.discard(name)  # removed meanwhile
            continue
        except OSError as exc:
            report.add("layer-file", path, f"{_rel(layout, path)}: {exc.strerror}", name)
        if not os.path.lexists(layout.diff(name)):
            report.add("missing-diff", layout.diff(name),
                       f"layer {name} has no {_rel(layout, layout.diff(name))}", name)
        elif (problem := chains.dir_problem(layout, [name])) is not None:
            report.add("bad-diff", layout.diff(name), problem.replace(layout.root + "/", ""),
                       name)
    return ids


def _check_refs(layout: Layout, report: Report, ids: set[str], mounted: set[str],
                damaged: set[str]) -> None:
    for name in _own_names(layout.refs_dir, damaged):
        path = os.path.join(layout.refs_dir, name)
        if not is_valid_id(name):
            report.add("bad-name", path, f"{_rel(layout, path)}: not a layer id")
            continue
        try:
            count = refs.read(path)
        except StoreCorruptError:  # a symlink, directory, FIFO, device: no count of ours
            report.add("refs", path, f"{_rel(layout, path)}: not a reference count file",
                       name)
            continue
        except OSError as exc:
            report.add("refs", path, f"{_rel(layout, path)}: unreadable ({exc.strerror})",
                       name)
            continue
        if name not in ids:
            if count:
                report.add("refs", path, f"{_rel(layout, path)}: {count} references to "
                           f"no layer", name)
            continue
        try:
            has_parent = bool(chains.read_chain(layout, name))
        except (StoreCorruptError, OSError):
            continue  # reported as layer-file
        is_mounted = layout.mnt(name) in mounted
        if has_parent and count and not is_mounted:
            report.add("refs", path, f"{_rel(layout, path)}: {count} references, but "
                       f"mnt/{name} is not mounted", name)
        elif is_mounted and not count:
            report.add("refs", path, f"{_rel(layout, path)}: no references, but "
                       f"mnt/{name} is mounted", name)


def _check_meta(layout: Layout, report: Report) -> None:
    try:
        meta.read(layout.meta_file)
    except ValueError as exc:
        report.add("meta", layout.meta_file, str(exc))
    if os.path.lexists(layout.convert_journal):
        report.add("meta", layout.convert_journal, "a conversion of the whiteouts is "
                   "unfinished: run aufs convert --to overlay (or --to aufs) again")


# -- repair ------------------------------------------------------------------------------


def repair(layout: Layout, report: Report) -> Report:
    """Fix what :func:`check` found where that loses no layer data; fills
    ``report.repaired`` and ``report.left``. The caller holds the store lock."""
    if any(p.kind == "store-dir" for p in report.problems):
        # Every other path runs through the store's directories: none is touched.
        report.left = list(report.problems)
        return report
    fixed: set[Problem] = set()
    chain_fixes = [p for p in report.problems if p.kind == "layer-file"]
    progress = True
    while chain_fixes and progress:  # a parent first: its children may then follow
        progress = False
        for p in list(chain_fixes):
            done = _rewrite_chain(layout, p.layer)
            if done:
                report.repaired.append(done)
                fixed.add(p)
                chain_fixes.remove(p)
                progress = True
    for p in report.problems:
        if p in fixed or p.kind == "layer-file":
            continue
        try:
            done = _fix(layout, p)
        except (OSError, DriverError) as exc:
            done = None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            p = Problem(p.kind, p.path, f"{p.message} (repair failed: {reason})", p.layer)
        if done:
            report.repaired.append(done)
        else:
            report.left.append(p)
    report.left[:0] = chain_fixes
    return report


def _rewrite_chain(layout: Layout, layer_id: str) -> str | None:
    path = layout.layers(layer_id)
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        parent = chains.first_parent(layout, layer_id)
        if not parent or not is_valid_id(parent) or parent == layer_id:
            return None
        below = chains.read_verified(layout, parent)
    except (OSError, StoreCorruptError):
        return None
    if layer_id in below:
        return None
    write_atomic(path, format_chain([parent, *below]))
    return (f"{_rel(layout, path)}: rewritten to agree with layers/{parent} "
            f"({len(below) + 1} ancestors)")


def _fix(layout: Layout, p: Problem) -> str | None:
    rel = _rel(layout, p.path)
    if p.kind in ("removing", "temp", "staging"):
        rmtree(p.path)
        return f"{rel}: removed"
    if p.kind == "bad-name":
        parent = os.path.dirname(p.path)
        if (parent in (layout.layers_dir, layout.refs_dir, layout.incomplete_dir)
                and _is_file(p.path)):
            os.unlink(p.path)  # a marker or a count: no layer data
            return f"{rel}: removed"
        return None
    if p.kind == "incomplete":
        store = Store(layout)
        if store.exists(p.layer):
            if store.children(p.layer) or os.path.ismount(layout.mnt(p.layer)):
                return None
            store.remove(p.layer)
        incomplete.clear(layout, p.layer)
        return f"{rel}: removed with the half-applied layer {p.layer}"
    if p.kind == "orphan-mnt":
        if os.path.ismount(p.path) or not _is_dir(p.path):
            return None
        try:
            os.rmdir(p.path)
        except OSError:
            return None  # not empty
        return f"{rel}: removed (empty)"
    if p.kind == "not-a-dir":
        if os.path.ismount(p.path):
            return None
        os.unlink(p.path)  # a symlink or a file in place of our own empty directory
        if os.path.dirname(p.path) == layout.mnt_dir:
            os.mkdir(p.path, 0o755)
            return f"{rel}: replaced by an empty directory"
        return f"{rel}: removed (made again when needed)"
    if p.kind == "refs":
        if not _is_file(p.path):
            refs.clear(p.path)  # not ours to read or write through: the link, not its target
        if not p.layer or not os.path.lexists(layout.layers(p.layer)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p.path)
            return f"{rel}: removed"
        count = 1 if os.path.ismount(layout.mnt(p.layer)) else 0
        refs.write(p.path, count)
        return f"{rel}: set to {count}"
    return None


