"""Where ``-o FILE`` writes: never into the store, never replacing what is not a file.

A regular file or a missing path is written whole or not at all: into a temporary name
beside it, renamed over it at the end. Anything else that exists — a device
(``/dev/null``, a tape), a FIFO, a symlink (its target) — is opened and written into,
as a shell redirection would: renaming over it would replace the device node or the
link itself with a regular file. A path inside the store (after resolving symlinks) is
refused before anything is written: a tar written into ``diff/<id>`` or ``mnt/<id>``
would change a layer behind the store's back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import IO

from aufs.cli.context import UsageError

__all__ = ["check_outside", "open_output", "replaceable"]

_O_WRITE_INTO = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOCTTY


def check_outside(path: str, store_root: str) -> None:
    """Refuse an output ``path`` inside the store at ``store_root``."""
    real = os.path.realpath(path)
    root = os.path.realpath(store_root)
    if real == root or real.startswith(root.rstrip("/") + "/"):
        raise UsageError(f"refusing to write {path} inside the store {root}")


def replaceable(path: str) -> bool:
    """May ``path`` be replaced by a rename (a regular file, or nothing there)?"""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def open_output(path: str | None, store_root: str) -> Iterator[IO[bytes]]:
    """stdout (``None`` or ``-``); else ``path`` as the module says."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    check_outside(path, store_root)
    if not replaceable(path):
        with os.fdopen(os.open(path, _O_WRITE_INTO, 0o666), "wb") as f:
            yield f
        return
    tmp = f"{path}.part-{os.getpid()}"
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
