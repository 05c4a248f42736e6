"""A comparable picture of a directory tree: every attribute apply_diff must keep or write."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def snapshot(root: str, *, times: bool = True) -> dict[str, tuple[Any, ...]]:
    """``{relpath: (type+mode, uid, gid, size, mtime_s, rdev, link target, content digest,
    hard-link group, xattrs)}``; the root is ``"."``. Hard-link groups name the first path
    (sorted) of each inode, so identity compares across trees."""
    out: dict[str, tuple[Any, ...]] = {}
    first_of_inode: dict[tuple[int, int], str] = {}
    paths = ["."]
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            paths.append(os.path.normpath(os.path.join(rel, name)))
    for rel in sorted(paths):
        path = os.path.join(root, rel)
        st = os.lstat(path)
        link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        digest = None
        group = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            group = first_of_inode.setdefault((st.st_dev, st.st_ino), rel)
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
        mtime = st.st_mtime_ns // 1_000_000_000 if times else None
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, size, mtime, rdev, link, digest, group,
                    _xattrs(path))
    return out
