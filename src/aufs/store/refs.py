"""Reference counts of ``get``/``put``, on disk so that every process shares them.

``refs/<id>`` holds a decimal count. Callers hold the store lock. A missing or
unreadable file is zero; the driver reconciles counts with the mount table.
"""

from __future__ import annotations

import contextlib
import os


def read(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        raw = os.read(fd, 32)
    finally:
        os.close(fd)
    try:
        return max(int(raw or b"0"), 0)
    except ValueError:
        return 0


def write(path: str, count: int) -> None:
    """Store ``count``. The file is kept at zero: creating and unlinking it on every
    get/put would cost a directory update each time (see :func:`clear`)."""
    # One small pwrite is all-or-nothing for our purposes; a torn count is re-read as 0
    # and then corrected against the mount table.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        data = b"%d\n" % max(count, 0)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def clear(path: str) -> None:
    """Forget the count of a layer that is going away."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def all_counts(refs_dir: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with os.scandir(refs_dir) as it:
            for e in it:
                counts[e.name] = read(e.path)
    except FileNotFoundError:
        pass
    return counts
