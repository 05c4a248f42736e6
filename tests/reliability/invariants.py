"""What a healthy store looks like, checked from the outside (on-disk files, mountinfo, /proc).

Every function returns a list of problems (empty when all is well) so that a failing
check can say everything that is wrong at once, together with the seed that made it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from aufs.store.layers import read_chain
from aufs.store.layout import REMOVING_SUFFIX, Layout
from aufs.whiteout import WH_PREFIX
from tests.leaks import fuse_daemons_below, mounts_below

mounts_under = mounts_below  # the names the reliability suite uses
fuse_daemons_for = fuse_daemons_below


def _names(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def store_problems(root: str) -> list[str]:
    """Every layer fully there or fully absent, parent chains valid, no leftovers.

    Call it on a store that a fresh ``aufs.init`` has just opened (recovery done).
    """
    lay = Layout.at(os.path.realpath(root))
    problems: list[str] = []
    layer_names = _names(lay.layers_dir)
    for top in (lay.layers_dir, lay.diff_dir, lay.mnt_dir, lay.work_dir):
        for name in sorted(_names(top)):
            if name.endswith(REMOVING_SUFFIX):
                problems.append(f"leftover of a removal: {top}/{name}")
            if "~" in name:
                problems.append(f"leftover temporary file: {top}/{name}")
    ids = {n for n in layer_names if not n.endswith(REMOVING_SUFFIX) and "~" not in n}
    for top, what in ((lay.diff_dir, "diff"), (lay.mnt_dir, "mnt")):
        names = {n for n in _names(top) if not n.endswith(REMOVING_SUFFIX)}
        for extra in sorted(names - ids):
            problems.append(f"half layer: {what}/{extra} exists but layers/{extra} does not")
        for missing in sorted(ids - names):
            problems.append(f"half layer: layers/{missing} exists but {what}/{missing} does not")
    for top, what in ((lay.work_dir, "work"), (lay.refs_dir, "refs")):
        for extra in sorted({n for n in _names(top) if not n.endswith(REMOVING_SUFFIX)} - ids):
            problems.append(f"orphan .aufs/{what}/{extra} of a layer that does not exist")
    for layer_id in sorted(ids):
        path = lay.layers(layer_id)
        if not os.path.isfile(path) or os.path.islink(path):
            problems.append(f"layers/{layer_id} is not a regular file")
            continue
        d = lay.diff(layer_id)
        if os.path.islink(d) or (os.path.lexists(d) and not os.path.isdir(d)):
            problems.append(f"diff/{layer_id} is not a directory")
        problems.extend(_chain_problems(lay, layer_id, ids))
    staging = sorted(_names(lay.staging_dir))
    if staging:
        problems.append(f"staging not empty after recovery: {staging}")
    return problems


def _chain_problems(lay: Layout, layer_id: str, ids: set[str]) -> list[str]:
    try:
        chain = read_chain(lay.layers(layer_id))
    except (OSError, UnicodeDecodeError) as exc:
        return [f"layers/{layer_id} unreadable: {exc}"]
    problems = []
    if layer_id in chain or len(set(chain)) != len(chain):
        problems.append(f"layers/{layer_id}: cyclic chain {chain}")
    for p in chain:
        if p not in ids:
            problems.append(f"layers/{layer_id}: ancestor {p} does not exist")
    if chain and chain[0] in ids:
        try:
            parent_chain = read_chain(lay.layers(chain[0]))
        except OSError as exc:
            return [*problems, f"layers/{chain[0]} unreadable: {exc}"]
        if chain[1:] != parent_chain:
            problems.append(f"layers/{layer_id}: chain {chain} disagrees with its parent's "
                            f"{parent_chain}")
    return problems


def leak_problems(root: str) -> list[str]:
    """Mounts or fuse-overlayfs daemons left under ``root`` (call after ``cleanup()``)."""
    problems = []
    mounts = mounts_under(root)
    if mounts:
        problems.append(f"mounts left: {mounts}")
    daemons = fuse_daemons_for(root)
    if daemons:
        problems.append(f"fuse-overlayfs daemons left: {daemons}")
    return problems


# -- tree snapshots ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Node:
    kind: str          # "dir", "file", "link", "chr", "blk", "fifo", "sock"
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    content: str       # sha256 of a file, target of a link, rdev of a device
    xattrs: tuple[tuple[str, bytes], ...]
    link_group: str    # first path (sorted) sharing this inode, for hard links


def snapshot(top: str) -> dict[str, Node]:
    """Everything about a tree that apply/diff may change, keyed by relative path.

    The top directory itself is recorded as ``"."``. Symlinks are never followed.
    """
    raw: dict[str, tuple[os.stat_result, str, tuple[tuple[str, bytes], ...]]] = {}
    _walk(top, ".", raw)
    first_path: dict[tuple[int, int], str] = {}
    for rel in sorted(raw):
        st = raw[rel][0]
        if not stat.S_ISDIR(st.st_mode):
            first_path.setdefault((st.st_dev, st.st_ino), rel)
    out = {}
    for rel, (st, content, xattrs) in raw.items():
        kind = _kind(st.st_mode)
        group = "" if kind == "dir" else first_path[(st.st_dev, st.st_ino)]
        out[rel] = Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                        st.st_size if kind == "file" else 0, content, xattrs, group)
    return out


def _walk(path: str, rel: str,
          out: dict[str, tuple[os.stat_result, str, tuple[tuple[str, bytes], ...]]]) -> None:
    st = os.lstat(path)
    content = ""
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                h.update(block)
        content = h.hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    out[rel] = (st, content, _xattrs(path))
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(path)):
            _walk(os.path.join(path, name), name if rel == "." else f"{rel}/{name}", out)


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    items = []
    for name in sorted(names):
        try:
            items.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(items)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "link"),
                       (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return name
    return "sock"


def without_dir_times(snap: dict[str, Node]) -> dict[str, Node]:
    """The snapshot with the mtimes of directories (they move whenever an entry changes)
    and of whiteout markers of either format (made at apply time, not from the tar)
    zeroed."""
    def timeless(rel: str, n: Node) -> bool:
        return (n.kind == "dir" or (n.kind == "chr" and n.content == "0:0")
                or os.path.basename(rel).startswith(WH_PREFIX))

    return {rel: (Node(n.kind, n.mode, n.uid, n.gid, 0, n.size, n.content, n.xattrs,
                       n.link_group) if timeless(rel, n) else n)
            for rel, n in snap.items()}


def snapshot_diff(before: dict[str, Node], after: dict[str, Node], limit: int = 8) -> str:
    """A short human description of how two snapshots differ."""
    lines = []
    for rel in sorted(set(before) | set(after)):
        a, b = before.get(rel), after.get(rel)
        if a == b:
            continue
        if a is None:
            lines.append(f"+ {rel} ({b.kind if b else '?'})")
        elif b is None:
            lines.append(f"- {rel} ({a.kind})")
        else:
            fields = [f for f in Node.__slots__ if getattr(a, f) != getattr(b, f)]
            lines.append(f"~ {rel}: " + ", ".join(
                f"{f} {getattr(a, f)!r}->{getattr(b, f)!r}" for f in fields))
        if len(lines) >= limit:
            lines.append("…")
            break
    return "; ".join(lines)
