"""Which layers stand on a layer, without reading every ``layers/<id>``.

``remove`` must refuse a layer that another layer names as its nearest parent. Docker's
format keeps only the upward link (``layers/<child>`` lists the parents), so the plain
answer reads the file of every layer in the store. This index keeps the downward one:
``.aufs/children/<parent>/<child>``, an empty file for each layer whose nearest parent
is ``<parent>``. It is a cache of what ``layers/`` says, checked against it:

- It is used only while ``layers/`` is as the index last left it:
  ``.aufs/children/.seen`` holds the directory's inode and change times, written after
  each change of ours. Any other change of ``layers/`` — a store written by Docker's own
  driver or an older aufs, a create or remove killed between its change and the new
  stamp — leaves the stamp behind: a lookup then reads every ``layers/<id>``, as before
  (and writes nothing), and the next ``create`` writes the index anew.
- A child it names counts only if ``layers/<child>`` exists and names the parent (an
  entry written by a create that died before publishing its layer is skipped).

So a crash at any point costs at most one full read later, never a wrong answer. One
case it cannot see: another program changing ``layers/`` without our lock within the
same clock tick as our last stamp (the kernel's coarse timestamps) — a program that
writes a store behind the back of the one using it is not supported anyway.
Callers hold the store lock.
"""

from __future__ import annotations

import contextlib
import os

from aufs._sys import safefs
from aufs._sys.files import rmtree, write_atomic
from aufs.store import chain as chains
from aufs.store import layers
from aufs.store.layout import Layout, is_valid_id

__all__ = ["added", "children", "fresh", "rebuild", "removed", "seen"]


def _dir(layout: Layout) -> str:
    return layout.children_dir


def _stamp_file(layout: Layout) -> str:
    return f"{_dir(layout)}/.seen"


def _stamp(layout: Layout) -> bytes:
    st = os.stat(layout.layers_dir)
    return b"%d %d %d %d\n" % (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def fresh(layout: Layout) -> bool:
    """Does the index describe ``layers/`` as it is? (Its stamp is the store's own file:
    anything but a regular file there — a FIFO, a symlink — is no stamp.)"""
    try:
        fd, _ = safefs.open_regular(_stamp_file(layout))
    except OSError:
        return False
    if fd < 0:
        return False
    try:
        recorded = os.read(fd, 128)
    finally:
        os.close(fd)
    return recorded == _stamp(layout)


def seen(layout: Layout) -> None:
    """Record ``layers/`` as the index now describes it (after a change of ours)."""
    write_atomic(_stamp_file(layout), _stamp(layout), fsync=False)  # a cache: no fsync


_NOT_A_DIR = (safefs.SymlinkInPathError, safefs.NotADirectoryInPathError)


def added(layout: Layout, parent: str, child: str) -> None:
    """Note ``child`` under ``parent``, before ``layers/<child>`` is published.

    The index's entries are the store's own files: ``<parent>`` is opened without
    following a symlink (one planted there would have the file made outside the store)
    and anything there that is no directory is replaced (the index is a cache).
    """
    os.makedirs(_dir(layout), 0o755, exist_ok=True)
    base = os.open(_dir(layout), safefs.O_ROOT)
    try:
        try:
            pfd = safefs.open_dir_at(base, parent, create=0o755)
        except _NOT_A_DIR:
            os.unlink(parent, dir_fd=base)
            pfd = safefs.open_dir_at(base, parent, create=0o755)
        try:
            with contextlib.suppress(FileExistsError):  # whatever it is: only its name counts
                os.close(os.open(child, safefs.O_NEW, 0o644, dir_fd=pfd))
        finally:
            os.close(pfd)
    finally:
        os.close(base)


def removed(layout: Layout, parent: str, child: str) -> None:
    """Forget ``child`` (removed; ``parent`` empty for a base layer) and its own, now
    empty, entry. Nothing is followed: a symlink planted as ``<parent>`` must not have
    a file of its target unlinked."""
    try:
        base = os.open(_dir(layout), safefs.O_ROOT)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if parent:
            with contextlib.suppress(FileNotFoundError, *_NOT_A_DIR):
                pfd = safefs.open_dir_at(base, parent)
                try:
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(child, dir_fd=pfd)
                finally:
                    os.close(pfd)
        with contextlib.suppress(OSError):  # not there, not empty (a stale entry), no dir
            os.rmdir(child, dir_fd=base)
    finally:
        os.close(base)


def rebuild(layout: Layout) -> None:
    """Read every ``layers/<id>`` and write the index anew (in place of the old one)."""
    stamp = _stamp(layout)  # before reading: a change meanwhile makes it stale again
    by_parent = _scan(layout)
    new = f"{_dir(layout)}.new-{os.getpid()}"
    rmtree(new)
    os.makedirs(new, 0o755)
    for parent, kids in by_parent.items():
        os.mkdir(f"{new}/{parent}")
        for kid in kids:
            os.close(os.open(f"{new}/{parent}/{kid}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                             0o644))
    with open(f"{new}/.seen", "wb") as f:
        f.write(stamp)
    old = f"{_dir(layout)}.old-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(_dir(layout), old)
    os.rename(new, _dir(layout))
    rmtree(old)


def _scan(layout: Layout) -> dict[str, list[str]]:
    by_parent: dict[str, list[str]] = {}
    for layer_id in layers.list_ids(layout.layers_dir):
        # leniently (a damaged child still protects its parent), never a cycle
        parent = chains.first_parent(layout, layer_id)
        if parent and parent != layer_id and is_valid_id(parent):
            by_parent.setdefault(parent, []).append(layer_id)
    return by_parent


def children(layout: Layout, parent: str) -> list[str]:
    """The layers whose nearest parent is ``parent``, sorted. A stale index is not
    used (nor written: a lookup changes nothing); ``create`` writes it anew."""
    if not fresh(layout):
        return sorted(_scan(layout).get(parent, []))
    try:
        base = os.open(_dir(layout), safefs.O_ROOT)
    except FileNotFoundError:
        return []
    try:
        pfd = safefs.open_dir_at(base, parent)
    except FileNotFoundError:
        return []
    except _NOT_A_DIR:  # damage: its listing would not be the index's
        return sorted(_scan(layout).get(parent, []))
    finally:
        os.close(base)
    try:
        names = os.listdir(pfd)
    finally:
        os.close(pfd)
    return [name for name in sorted(names)  # names from the disk: checked before use
            if is_valid_id(name) and name != parent
            and chains.first_parent(layout, name) == parent]
