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

from aufs._sys.files import rmtree, write_atomic
from aufs.store import chain as chains
from aufs.store import layers
from aufs.store.layout import Layout, is_valid_id

__all__ = ["added", "children", "fresh", "rebuild", "removed", "seen"]


def _dir(layout: Layout) -> str:
    return f"{layout.private_dir}/children"


def _stamp_file(layout: Layout) -> str:
    return f"{_dir(layout)}/.seen"


def _stamp(layout: Layout) -> bytes:
    st = os.stat(layout.layers_dir)
    return b"%d %d %d %d\n" % (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def fresh(layout: Layout) -> bool:
    """Does the index describe ``layers/`` as it is?"""
    try:
        with open(_stamp_file(layout), "rb") as f:
            recorded = f.read(128)
        return recorded == _stamp(layout)
    except FileNotFoundError:
        return False


def seen(layout: Layout) -> None:
    """Record ``layers/`` as the index now describes it (after a change of ours)."""
    write_atomic(_stamp_file(layout), _stamp(layout), fsync=False)  # a cache: no fsync


def added(layout: Layout, parent: str, child: str) -> None:
    """Note ``child`` under ``parent``, before ``layers/<child>`` is published."""
    path = f"{_dir(layout)}/{parent}"
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, 0o755)
    os.close(os.open(f"{path}/{child}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def removed(layout: Layout, parent: str, child: str) -> None:
    """Forget ``child`` (removed; ``parent`` empty for a base layer) and its own, now
    empty, entry."""
    if parent:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{_dir(layout)}/{parent}/{child}")
    with contextlib.suppress(OSError):  # not there, or not empty (a stale entry)
        os.rmdir(f"{_dir(layout)}/{child}")


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
        names = os.listdir(f"{_dir(layout)}/{parent}")
    except FileNotFoundError:
        return []
    return [name for name in sorted(names)  # names from the disk: checked before use
            if is_valid_id(name) and name != parent
            and chains.first_parent(layout, name) == parent]
