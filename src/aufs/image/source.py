"""Read the files of an image archive: a directory or a tar (optionally compressed).

Names inside the archive are relative POSIX paths; one that leaves the archive
(``../x``, ``/etc/passwd``, a symlink out of the directory) is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tarfile
from collections.abc import Iterator
from typing import IO, Protocol

from aufs.errors import ImageError


class Source(Protocol):
    def has(self, name: str) -> bool: ...

    def open(self, name: str) -> IO[bytes]: ...


def clean(name: str) -> str:
    """The archive-relative form of ``name``; ImageError if it leaves the archive."""
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm in (".", "..") or norm.startswith("../"):
        raise ImageError(f"archive path {name!r} points outside the archive")
    return norm


class DirSource:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _path(self, name: str) -> str:
        path = os.path.realpath(os.path.join(self.root, clean(name)))
        if not path.startswith(self.root + os.sep):
            raise ImageError(f"archive path {name!r} points outside the archive")
        return path

    def has(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def open(self, name: str) -> IO[bytes]:
        path = self._path(name)
        if not os.path.isfile(path):
            raise ImageError(f"the archive has no file {name}")
        return open(path, "rb")


class TarSource:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar
        self._members: dict[str, tarfile.TarInfo] = {}
        for m in tar.getmembers():
            with contextlib.suppress(ImageError):
                self._members[clean(m.name)] = m

    def has(self, name: str) -> bool:
        m = self._members.get(clean(name))
        return m is not None and (m.isfile() or m.issym() or m.islnk())

    def open(self, name: str) -> IO[bytes]:
        m = self._members.get(clean(name))
        if m is None:
            raise ImageError(f"the archive has no file {name}")
        try:
            f = self._tar.extractfile(m)
        except (KeyError, tarfile.TarError) as exc:  # a link to nothing
            raise ImageError(f"the archive's {name} is a broken link") from exc
        except RecursionError:  # tarfile follows links by recursion
            raise ImageError(f"the archive's {name} is a symlink loop") from None
        if f is None:
            raise ImageError(f"the archive's {name} is not a file")
        return f


@contextlib.contextmanager
def open_source(path: str) -> Iterator[Source]:
    """The archive at ``path``: a directory (an OCI layout) or a tar file."""
    if os.path.isdir(path):
        yield DirSource(path)
        return
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(open(path, "rb"))
        except OSError as exc:
            raise ImageError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            tar = stack.enter_context(tarfile.open(fileobj=f, mode="r:*"))
        except (tarfile.TarError, EOFError, OSError, io.UnsupportedOperation) as exc:
            raise ImageError(f"{path} is neither a tar archive nor a directory") from exc
        try:
            src = TarSource(tar)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImageError(f"{path}: damaged tar archive ({exc})") from exc
        yield src
