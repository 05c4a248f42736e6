"""Parent chains read from ``layers/<id>``, checked before any id in them becomes a path.

Nothing read from the store's own files is trusted: a store may be damaged (a crash on
a filesystem that lost a write, a disk error) or tampered with (``layers/b`` listing
``../../outside`` would stack a host directory into ``b``'s union). So:

- ``layers/<id>`` must be a regular file; a symlink there is not followed
  (``O_NOFOLLOW``), a FIFO is not waited on (``O_NONBLOCK``), and what was opened is
  checked with ``fstat``;
- it must be UTF-8, at most :data:`MAX_BYTES`, one valid layer id a line (blank lines
  and surrounding white space are tolerated, as the seed's reader did);
- no id may appear twice, nor the layer itself (a cycle);
- ``diff/<id>`` may be a symlink only as a migration leaves one (:func:`relocated_dir`):
  to the absolute path of the old graph's ``…/graph/<id>/layer`` or
  ``…/containers/<id>/rw`` of the same id; ``diff/b`` pointing at ``/etc`` would make
  ``/etc`` the rw branch of ``b``'s union;
- :func:`read_verified` also checks that the direct parent's own file lists exactly the
  rest of the chain, and that every ancestor exists — what a union would be built from.

Every violation is a :class:`StoreCorruptError` naming the file (and line). Only the
layers that stand on the damaged file fail; :mod:`aufs.store.check` reports them all.
"""

from __future__ import annotations

import functools
import os
import stat

from aufs._sys import safefs
from aufs.errors import StoreCorruptError
from aufs.store.layout import MAX_ID_LEN, Layout, is_valid_id

__all__ = ["MAX_BYTES", "check_dirs", "dir_problem", "first_parent", "may_link_to", "not_a_dir",
           "parse", "read_chain", "read_store_file", "read_verified", "relocated_dir"]

#: Docker's aufs stacks at most 127 layers (a 65-byte line each); 1 MiB is far beyond.
MAX_BYTES = 1 << 20



def read_bytes(path: str) -> bytes:
    """The content of the layer file ``path``; FileNotFoundError if there is none,
    StoreCorruptError if it is no regular file or too large."""
    return read_store_file(path)


def read_store_file(path: str, limit: int = MAX_BYTES, what: str = "layer file") -> bytes:
    """The content of the store's own file ``path`` (``what``, for errors), read without
    following a symlink or blocking on a FIFO; FileNotFoundError if there is none,
    StoreCorruptError if it is no regular file or larger than ``limit``."""
    fd, st = safefs.open_regular(path)
    if fd < 0:
        raise StoreCorruptError(f"{path}: is {safefs.kind(st.st_mode)}, not a {what}")
    try:
        if st.st_size > limit:
            raise StoreCorruptError(f"{path}: {st.st_size} bytes, too large for a {what}")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > limit:
                raise StoreCorruptError(f"{path}: too large for a {what}")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


# A chain file's lines are checked at every read, and a deep chain is read at every get and
# put (100 lines, twice): an id once found valid is remembered (a pure function of it).
# A line longer than any id is refused before the cache: it would keep up to a whole
# chain file's worth of text per entry.
_cached_valid_id = functools.lru_cache(maxsize=1 << 16)(is_valid_id)


def _valid_id(text: str) -> bool:
    return len(text) <= MAX_ID_LEN and _cached_valid_id(text)


def _shown(line: str) -> str:
    """A line for an error message: a damaged file's megabyte-long line is cut short
    (the message is printed for every layer standing on the file)."""
    if len(line) <= MAX_ID_LEN:
        return repr(line)
    return f"{line[:MAX_ID_LEN]!r}... ({len(line)} characters)"


# A get and a put read the same chain files again and again (a get of a layer 100 deep
# checks 2 files of 100 lines): a chain once parsed is remembered by the file's bytes and
# the layer it belongs to, which is all its answer depends on (``path`` only names the file
# in errors, and errors are not remembered). Files larger than Docker's deepest chain
# (127 lines of 65 bytes) are parsed every time; at most 8 MiB of bytes are kept.
_PARSED: dict[tuple[bytes, str], tuple[str, ...]] = {}
_PARSED_MAX = 512
_PARSED_MAX_BYTES = 16 << 10


def parse(path: str, data: bytes, layer_id: str) -> list[str]:
    """The ancestors listed in ``data`` (the file ``path`` of ``layer_id``), checked."""
    if len(data) > _PARSED_MAX_BYTES:
        return _parse(path, data, layer_id)
    key = (data, layer_id)
    known = _PARSED.get(key)
    if known is None:
        known = tuple(_parse(path, data, layer_id))
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = known
    return list(known)


def _parse(path: str, data: bytes, layer_id: str) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise StoreCorruptError(f"{path} line {line}: not UTF-8 text") from None
    chain: list[str] = []
    seen = {layer_id}
    for number, raw in enumerate(text.split("\n"), 1):
        parent = raw.strip()
        if not parent:
            continue
        if not _valid_id(parent):
            raise StoreCorruptError(f"{path} line {number}: invalid layer id {_shown(parent)}")
        if parent in seen:
            what = "the layer itself" if parent == layer_id else "listed twice"
            raise StoreCorruptError(
                f"{path} line {number}: {parent} is {what}: the chain is a cycle")
        seen.add(parent)
        chain.append(parent)
    return chain


def read_chain(layout: Layout, layer_id: str) -> list[str]:
    """Ancestors of ``layer_id`` (a valid id), nearest first, from its own file only.
    FileNotFoundError if the layer does not exist."""
    path = layout.layers(layer_id)
    return parse(path, read_bytes(path), layer_id)


class Snapshot:
    """Layer files read at most once each while it lives (a command that looks at every
    layer, as ``aufs ls``): :func:`read_verified` takes their chains from it, and a layer
    whose file it has read counts as existing without another ``lstat``. Errors are not
    kept: a damaged file is read (and reported) again."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._read: dict[str, list[str]] = {}
        self.verified: dict[str, list[str]] = {}

    def read_chain(self, layer_id: str) -> list[str]:
        got = self._read.get(layer_id)
        if got is None:
            got = self._read[layer_id] = read_chain(self._layout, layer_id)
        return got

    def exists(self, layer_id: str) -> bool:
        return layer_id in self._read or os.path.lexists(self._layout.layers(layer_id))


def read_verified(layout: Layout, layer_id: str, snapshot: Snapshot | None = None, *,
                  ancestors: bool = True) -> list[str]:
    """:func:`read_chain`, plus: every ancestor exists, and the direct parent's own file
    lists exactly the rest of the chain. One more read and one ``lstat`` an ancestor
    (fewer within a ``snapshot``). ``ancestors=False`` leaves out the ``lstat`` of the
    ancestors' layer files, for a caller that checks their data directories instead
    (:func:`check_dirs`, as a get does before it stacks them): no layer with children
    is ever removed, so an ancestor's file is missing only in a store changed by hand,
    and then what would be stacked is still a checked directory of the store."""
    if snapshot is None:
        snapshot = Snapshot(layout)
    chain = snapshot.read_chain(layer_id)
    if not chain:
        return chain
    path = layout.layers(layer_id)
    for number, parent in enumerate(chain if ancestors else (), 1):
        if not snapshot.exists(parent):
            raise StoreCorruptError(
                f"{path} line {number}: parent {parent} does not exist")
    try:
        own = snapshot.read_chain(chain[0])
    except FileNotFoundError:  # removed meanwhile
        raise StoreCorruptError(f"{path} line 1: parent {chain[0]} does not exist") from None
    if own != chain[1:]:
        raise StoreCorruptError(
            f"{path}: the chain below {chain[0]} disagrees with {layout.layers(chain[0])}")
    return chain


def first_parent(layout: Layout, layer_id: str) -> str | None:
    """The direct parent named by ``layers/<layer_id>`` as far as it can be read, for
    deciding whether a layer may be removed: a damaged file still names its first line
    (so a damaged child keeps protecting its parent). None if there is no such file."""
    path = layout.layers(layer_id)
    try:
        fd, _ = safefs.open_regular(path)
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    if fd < 0:
        return ""
    try:
        head = os.read(fd, 4096)
    finally:
        os.close(fd)
    for raw in head.split(b"\n"):
        line = raw.strip()
        if line:
            return line.decode("utf-8", "replace")
    return ""


#: Where a pre-0.7 Docker graph kept a layer's files, as ``(dir, leaf)`` around its id:
#: the only places a migration's ``diff/<id>`` symlink may point to.
_MIGRATED_FROM = (("graph", "layer"), ("containers", "rw"))


def _migrated_shape(path: str, layer_id: str) -> bool:
    parts = path.split("/")
    return len(parts) >= 4 and (parts[-3], parts[-1]) in _MIGRATED_FROM and \
        parts[-2] == layer_id


def may_link_to(target: str, layer_id: str) -> bool:
    """May ``diff/<layer_id>`` be a symlink to ``target``? Only as a migration leaves one:
    ``target`` is an absolute, normalized ``…/graph/<id>/layer`` or ``…/containers/<id>/rw``
    of this very id, and so is the real path it resolves to (no symlink swapped in
    further down)."""
    return _link_dir(target, layer_id) is not None


def _link_dir(target: str, layer_id: str) -> str | None:
    """The real path of ``target`` if :func:`may_link_to` allows it, else None."""
    if not (os.path.isabs(target) and os.path.normpath(target) == target
            and _migrated_shape(target, layer_id)):
        return None
    real = os.path.realpath(target)
    return real if _migrated_shape(real, layer_id) else None


def relocated_dir(layout: Layout, layer_id: str) -> str:
    """The directory a migration's ``diff/<id>`` symlink stands for, checked before it is
    used (StoreCorruptError if not: :func:`may_link_to`)."""
    link = layout.diff(layer_id)
    target = os.readlink(link)
    real = _link_dir(target, layer_id)
    if real is None:
        raise StoreCorruptError(
            f"{link}: a symlink to {target!r}, which is not where a migration leaves a "
            f"layer (an absolute …/graph/{layer_id}/layer or …/containers/{layer_id}/rw)")
    return real


def dir_problem(layout: Layout, layer_ids: list[str]) -> str | None:
    """Why the data directory of one of ``layer_ids`` cannot be used, or None:
    ``diff/<id>`` must be a directory (or, for a layer migrated in place, a symlink
    to one that :func:`relocated_dir` accepts)."""
    for layer_id in layer_ids:
        got = _data_dir_stat(layout, layer_id)
        if isinstance(got, str):
            return got
    return None


def _data_dir_stat(layout: Layout, layer_id: str) -> os.stat_result | str:
    """The stat of the layer's data directory (a migration's symlink followed), or why
    it cannot be used."""
    path = layout.diff(layer_id)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(relocated_dir(layout, layer_id))
    except StoreCorruptError as exc:
        return str(exc)
    except FileNotFoundError:
        return f"{path}: missing (the files of layer {layer_id})"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path}: is {safefs.kind(st.st_mode)}, not a layer directory"
    return st


_O_LOOKUP = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _plain_dir_stat(diff_fd: int, layer_id: str) -> os.stat_result | None:
    """The stat of ``diff/<layer_id>`` if it is a plain directory (not a symlink), looked
    up from the open ``diff/``; None otherwise."""
    try:
        st = os.stat(layer_id, dir_fd=diff_fd, follow_symlinks=False)
    except OSError:
        return None
    return st if stat.S_ISDIR(st.st_mode) else None


def check_dirs(layout: Layout, layer_id: str, chain: list[str]) -> dict[str, os.stat_result]:
    """Before a union of ``layer_id`` over ``chain`` is mounted: its data directories
    (:func:`dir_problem`), its mount point and overlayfs work directory: directories,
    never symlinks (the mount would follow them out of the store, and overlayfs writes
    into its work directory). StoreCorruptError if not; else the stat of each layer's
    data directory, by layer id."""
    stats: dict[str, os.stat_result] = {}
    try:  # each id looked up in diff/ (100 of them for a layer 100 deep), not from /
        diff_fd = os.open(layout.diff_dir, _O_LOOKUP)
    except OSError:
        diff_fd = -1  # the slow path below says what is wrong
    try:
        for one in (layer_id, *chain):
            plain = _plain_dir_stat(diff_fd, one) if diff_fd >= 0 else None
            if plain is None:  # a migration's symlink, or a problem to put into words
                got = _data_dir_stat(layout, one)
                if isinstance(got, str):
                    raise StoreCorruptError(got)
                plain = got
            stats[one] = plain
    finally:
        if diff_fd >= 0:
            os.close(diff_fd)
    for path, what in ((layout.mnt(layer_id), "a mount point"),
                       (layout.work(layer_id), "a work directory")):
        problem = not_a_dir(path)
        if problem:
            raise StoreCorruptError(f"{path}: is {problem}, not {what}")
    return stats


def not_a_dir(path: str) -> str:
    """What ``path`` is if it exists and is no directory (a symlink is none): "" if it
    is missing or a directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""  # made by the caller
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    return "" if stat.S_ISDIR(st.st_mode) else safefs.kind(st.st_mode)
