"""Tar stream -> layer, atomically and without ever leaving the layer (Docker's ApplyDiff).

:func:`apply_layer` extracts into a staging directory of the store (``.aufs/staging/
apply-<id>-<thread>-<pid>``), which starts as a hard-link clone of ``diff/<id>``
(directories recreated, everything else linked: the extractor never writes into an
existing inode, it unlinks and creates), and then, under the store lock, swaps it with
``diff/<id>`` in one ``renameat2(RENAME_EXCHANGE)`` and deletes the old tree. Any
error — malformed input, a breakout, ENOSPC, KeyboardInterrupt, a kill — leaves
``diff/<id>`` as it was; a dead process's staging directory is removed by the store's
recovery (``aufs.init``). A layer whose union is mounted is refused
(:class:`LayerMountedError`): its files would change under the union's users.

:func:`extract_into_dir` extracts in place, for :class:`aufs.graphdriver.NaiveDiffDriver`
(whose target is a mounted union, where atomicity is not to be had).

An apply into an empty layer also records the tar (:mod:`aufs.archive.tarsplit`, kept
as ``.aufs/tar-split/<id>``), so that an export can give the same bytes back; an apply
into a layer that has content drops the record (it no longer describes the layer).

Speed: the tar stream is parsed by :mod:`aufs.archive.tarread` (decompressed by a thread
of its own, :mod:`aufs.archive.compression`; data of a tar *file* moved by
``copy_file_range``), entries made by :mod:`aufs.archive.unpack` with few system calls
each (:mod:`aufs.archive.writefile`); for a big uncompressed tar file, a second process
writes regular files while this one parses (:mod:`aufs.archive.offload`). The README's
design section has the numbers, and why that is a process and not a pool of threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING

from aufs._sys import safefs
from aufs.archive import tarsplit
from aufs.archive.compression import open_chunks
from aufs.archive.tarread import TarReader
from aufs.archive.unpack import Unpacker
from aufs.archive.writefile import Policy
from aufs.errors import DriverError, LayerInUseError, LayerMountedError
from aufs.observe import EntryHook, counting_entries, entry_hook
from aufs.store import staging

if TYPE_CHECKING:
    from aufs.store.layout import Layout
    from aufs.whiteout import WhiteoutFormat

__all__ = ["LayerMountedError", "apply_layer", "extract", "extract_into_dir"]


# -- the driver entry point ---------------------------------------------------------------

def apply_layer(layout: Layout, id: str, stream: IO[bytes], whiteouts: WhiteoutFormat, *,
                mounted: Callable[[str], bool],
                locked: Callable[[], AbstractContextManager[None]]) -> int | None:
    """Extract the layer tar ``stream`` into ``diff/<id>``: all of it, or nothing.

    ``mounted(id)`` tells whether the layer's union is mounted, ``locked()`` holds the
    store lock (the driver's). Returns the layer's diff size (as
    :func:`aufs.archive.diff_size` counts it) when the extraction could keep count (an
    empty layer, nothing removed), else None."""
    _refuse_mounted(mounted, id)
    diff = layout.diff(id)
    if os.path.islink(diff):
        raise DriverError(f"layer {id} lives outside the store ({diff} is a symlink, left "
                          "by a migration): apply_diff cannot replace it atomically")
    path = layout.staging(f"apply-{id}-{threading.get_ident()}-{os.getpid()}")
    os.makedirs(layout.staging_dir, exist_ok=True)
    staging.discard(path)  # our own leftover (same pid and thread): never a live apply
    split: tarsplit.Recorder | None = None
    try:
        os.mkdir(path, 0o700)
        seed_ino = os.lstat(diff).st_ino
        made = staging.clone_tree(diff, path)
        if not made:  # the tar is the whole layer: record it
            split_path = layout.staging(
                f"tar-split-{id}-{threading.get_ident()}-{os.getpid()}")
            staging.discard(split_path)
            split = tarsplit.Recorder(split_path)
        root_fd = os.open(path, safefs.O_DIR)
        try:
            size = extract(root_fd, stream, whiteouts, made=made, split=split)
        finally:
            os.close(root_fd)
        recorded = split is not None and split.finish(path)
        with locked():
            _refuse_mounted(mounted, id)
            if os.lstat(diff).st_ino != seed_ino:
                raise LayerInUseError(f"layer {id} was changed by another apply meanwhile")
            safefs.exchange(path, diff)
            _keep_split(layout.tar_split_dir, layout.tar_split(id),
                        split.path if recorded and split is not None else None)
        return size
    finally:
        # The old tree once swapped, else the unfinished one; recovery removes it after
        # a crash. A failed removal must not hide the outcome.
        with contextlib.suppress(OSError):
            staging.discard(path)
        if split is not None:
            split.discard()


def _keep_split(directory: str, path: str, recorded: str | None) -> None:
    """The layer's tar-split: the one just ``recorded``, or none."""
    if recorded is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    os.makedirs(directory, exist_ok=True)
    os.replace(recorded, path)


def _refuse_mounted(mounted: Callable[[str], bool], id: str) -> None:
    if mounted(id):
        raise LayerMountedError(f"layer {id} is mounted: apply_diff needs it unmounted")


def extract_into_dir(directory: str, stream: IO[bytes],
                     whiteouts: WhiteoutFormat | None = None) -> None:
    """Extract a layer tar straight into ``directory`` (not atomic).

    For :class:`aufs.graphdriver.NaiveDiffDriver`, whose ``directory`` is a mounted layer:
    a ``.wh.`` entry removes what it names and an opaque marker empties the directory,
    and the union records those deletions itself (Docker's UnpackLayer on a mount).
    Pass ``whiteouts`` to also write whiteouts of that format.
    """
    root_fd = os.open(directory, safefs.O_DIR)
    try:
        extract(root_fd, stream, whiteouts)
    finally:
        os.close(root_fd)


def extract(root_fd: int, stream: IO[bytes], whiteouts: WhiteoutFormat | None, *,
            made: dict[str, int] | None = None,
            split: tarsplit.Recorder | None = None) -> int | None:
    """Extract the (possibly compressed) layer tar ``stream`` below the directory
    ``root_fd``. ``whiteouts``: the format to write deletions in (None: only remove).

    ``made``: every path below ``root_fd`` with its flags, as
    :func:`aufs.store.staging.clone_tree` returns
    them (``{}`` for an empty directory), if the caller knows them (it saves lookups);
    None: the tree is unknown (a live directory).

    ``split``: records the tar (:mod:`aufs.archive.tarsplit`).

    Returns the diff size of the tree if it started empty and nothing was removed (else
    None: count it with a walk).
    """
    _, chunks = open_chunks(stream)
    read, skip = chunks.read, chunks.skip
    counting: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if split is not None:
        read, skip = split.tap(read, skip, chunks.fd)
        counting = counting_entries(_both(entry_hook(), split.counted))
    unpacker = Unpacker(root_fd, whiteouts, made=made, policy=Policy(),
                        source_fd=chunks.fd, source_origin=chunks.origin,
                        on_content=None if split is None else split.payload)
    try:
        with counting:
            unpacker.run(TarReader(read, skip))
        return unpacker.size
    finally:
        unpacker.close()
        chunks.close()


def _both(first: EntryHook | None, second: EntryHook) -> EntryHook:
    if first is None:
        return second

    def both() -> None:
        first()
        second()

    return both
