"""Reference counts of ``get``/``put``, on disk so that every process shares them.

``refs/<id>`` holds a decimal count, followed by `` m`` while a ``get`` is mounting the
layer (:meth:`Count.mark_mounting`): found by the next ``get``/``put``/``cleanup``, it
says a process died mid-mount and may have left a FUSE daemon that mounts on its own
later. Callers hold the store lock. A missing or unreadable file is zero; the driver
reconciles counts with the mount table.
"""

from __future__ import annotations

import contextlib
import os

from aufs._sys import safefs
from aufs._sys.files import rmtree
from aufs.errors import StoreCorruptError


def _open(path: str, flags: int, *, create: bool = False) -> int:
    # never through a symlink (a tampered store would have us write a count into a host
    # file), never a FIFO, socket or device opened
    fd, _ = safefs.open_regular(path, flags, create=create)
    if fd < 0:
        raise StoreCorruptError(f"{path}: not a reference count file")
    return fd


_MOUNTING = b"m"


def _parse(raw: bytes) -> int:
    try:
        return max(int(raw.split(maxsplit=1)[0] if raw.strip() else b"0"), 0)
    except ValueError:
        return 0


def _marked(raw: bytes) -> bool:
    return raw.split()[1:2] == [_MOUNTING]


def mounting(path: str) -> bool:
    """Was a ``get`` mounting this layer when its process died (see the module doc)?"""
    try:
        fd = _open(path, os.O_RDONLY)
    except (FileNotFoundError, StoreCorruptError):
        return False
    try:
        return _marked(os.read(fd, 32))
    finally:
        os.close(fd)


def read(path: str) -> int:
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return _parse(os.read(fd, 32))
    finally:
        os.close(fd)


class Count:
    """One layer's count, open for one get or put: one open for the read and the write.

    The file is kept at zero, never unlinked on a put: creating and unlinking it on every
    get/put would cost a directory update each time (see :func:`clear`).
    """

    def __init__(self, path: str) -> None:
        self._fd = _open(path, os.O_RDWR, create=True)
        try:
            self._raw = os.pread(self._fd, 32, 0)
        except BaseException:
            os.close(self._fd)
            raise
        self.value = _parse(self._raw)
        self.mounting = _marked(self._raw)

    def mark_mounting(self) -> None:
        """Say that a mount is being made (cleared by the next :meth:`set`)."""
        self._write(b"%d %s\n" % (self.value, _MOUNTING))
        self.mounting = True

    def set(self, count: int) -> None:
        # One small pwrite is all-or-nothing for our purposes; a torn count is re-read
        # as 0 and then corrected against the mount table.
        self._write(b"%d\n" % max(count, 0))
        self.value = count
        self.mounting = False

    def _write(self, data: bytes) -> None:
        if len(data) < len(self._raw):  # padded, not truncated: one pwrite, no ftruncate
            data = data[:-1] + b" " * (len(self._raw) - len(data)) + b"\n"
        os.pwrite(self._fd, data, 0)
        self._raw = data

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Count:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write(path: str, count: int) -> None:
    """Store ``count`` (see :class:`Count`)."""
    with Count(path) as c:
        c.set(count)


def clear(path: str) -> None:
    """Forget the count of a layer that is going away."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        rmtree(path)  # damage: whatever stands there goes with the layer


def all_counts(refs_dir: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with os.scandir(refs_dir) as it:
            for e in it:
                with contextlib.suppress(StoreCorruptError, OSError):
                    counts[e.name] = read(e.path)
    except FileNotFoundError:
        pass
    return counts
