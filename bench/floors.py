"""Lower bounds for ``changes`` in Python: the least any implementation must do.

``changes`` of a layer lists every directory of the layer and looks each name up in the
parent. These two skeletons do only that, without any of the work that makes an answer
(no whiteouts, no comparisons, no results). The bench times them against the same
``find`` as ``changes``: what they cost is the floor for a pure-Python ``changes``.
"""

from __future__ import annotations

import os
import stat

_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # a layer's root may be a symlink
_DIR = _ROOT | os.O_NOFOLLOW
_S_IFMT = 0o170000


def list_dirs(upper: str) -> int:
    """Open and list every directory under ``upper`` (no ``stat``); the entries seen."""
    return _walk(upper, None)[0]


def list_and_look_up(upper: str, lower: str) -> int:
    """:func:`list_dirs` plus one ``lstat`` in ``lower`` of each name ``changes`` must
    look up: not whiteouts nor AUFS housekeeping (``.wh.*``), nothing below a directory
    the parent does not have as a directory. Returns the names found."""
    return _walk(upper, lower)[1]


def _walk(upper: str, lower: str | None) -> tuple[int, int]:
    """Entries seen, names found in ``lower`` (None: nothing looked up)."""
    seen = found = 0
    stack: list[tuple[str, str | None]] = [(upper, lower)]
    while stack:
        path, low = stack.pop()
        fd = os.open(path, _ROOT if path == upper else _DIR)
        try:
            with os.scandir(fd) as it:
                for e in it:
                    seen += 1
                    name = e.name
                    sub_low = None
                    if low is not None and not name.startswith(".wh."):
                        try:
                            st = os.lstat(low + "/" + name)
                        except (FileNotFoundError, NotADirectoryError):
                            pass
                        else:
                            found += 1
                            if st.st_mode & _S_IFMT == stat.S_IFDIR:
                                sub_low = low + "/" + name
                    if e.is_dir(follow_symlinks=False):
                        stack.append((path + "/" + name, sub_low))
        finally:
            os.close(fd)
    return seen, found
