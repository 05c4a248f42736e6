"""Tar stream -> directory fd, without ever leaving the directory (Docker's UnpackLayer).

:func:`extract` extracts a layer tar below a directory fd; the driver's ``apply_diff``
calls it on a staging clone of the layer (:class:`aufs.store.staging.LayerSwap`), which
it then swaps in: all of the layer's new content, or none.

:func:`extract_into_dir` extracts in place, for :class:`aufs.graphdriver.NaiveDiffDriver`
(whose target is a mounted union, where atomicity is not to be had).

:func:`extract` can also record the tar (``split``, :mod:`aufs.archive.tarsplit`): the
driver does for an apply into an empty layer, so that an export can give the same bytes
back (``.aufs/tar-split/<id>``).

Speed: the tar stream is parsed by :mod:`aufs.archive.tarread` (decompressed by a thread
of its own, :mod:`aufs.archive.compression`; data of a tar *file* moved by
``copy_file_range``), entries made by :mod:`aufs.archive.unpack` with few system calls
each (:mod:`aufs.archive.writefile`); for a big uncompressed tar file, a second process
writes regular files while this one parses (:mod:`aufs.archive.offload`). The README's
design section has the numbers, and why that is a process and not a pool of threads.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING

from aufs._sys import safefs
from aufs.archive import tarsplit
from aufs.archive.compression import open_chunks
from aufs.archive.tarread import TarReader
from aufs.archive.unpack import Unpacker
from aufs.archive.writefile import Policy

if TYPE_CHECKING:
    from aufs.whiteout import WhiteoutFormat

__all__ = ["extract", "extract_into_dir"]


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
    if split is not None:
        read, skip = split.tap(read, skip, chunks.fd)
    unpacker = Unpacker(root_fd, whiteouts, made=made, policy=Policy(),
                        source_fd=chunks.fd, source_origin=chunks.origin,
                        on_content=None if split is None else split.payload)
    try:
        reader = TarReader(read, skip)
        if split is not None:
            split.follow(reader)
        unpacker.run(reader)
        return unpacker.size
    finally:
        unpacker.close()
        chunks.close()

