"""Lower bounds for ``changes`` in Python: the least any implementation must do.

``changes`` of a layer lists every directory of the layer and looks each name up in the
parent. These two skeletons do only that, without any of the work that makes an answer
(no whiteouts, no comparisons, no results). The bench times them against the same
``find`` as ``changes``: what they cost is the floor for a pure-Python ``changes``.
"""

from __future__ import annotations

import os

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


def list_dirs(upper: str) -> int:
    """Open and list every directory under ``upper`` (no ``stat``); the entries seen."""
    seen = 0
    stack = [upper]
    while stack:
        path = stack.pop()
        fd = os.open(path, _DIR)
        try:
            with os.scandir(fd) as it:
                for e in it:
                    seen += 1
                    if e.is_dir(follow_symlinks=False):
                        stack.append(path + "/" + e.name)
        finally:
            os.close(fd)
    return seen


def list_and_look_up(upper: str, lower: str) -> int:
    """:func:`list_dirs` plus one ``lstat`` of each name in ``lower``; the names found."""
    found = 0
    stack = [(upper, lower)]
    while stack:
        path, low = stack.pop()
        fd = os.open(path, _DIR)
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        os.lstat(low + "/" + e.name)
                        found += 1
                    except (FileNotFoundError, NotADirectoryError):
                        pass
                    if e.is_dir(follow_symlinks=False):
                        stack.append((path + "/" + e.name, low + "/" + e.name))
        finally:
            os.close(fd)
    return found
