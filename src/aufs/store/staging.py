"""``.aufs/staging/``: things being built, renamed into place when whole.

A staging name is made by :func:`name` and ends in the pid of the process building it
(``<kind>-…-<pid>``, read back by :func:`owner`): recovery (:mod:`aufs.store.recover`)
removes what a dead process left.

:class:`LayerSwap` is the store's half of ``apply_diff``: a staging directory that starts
as a hard-link clone of ``diff/<id>`` (:func:`clone_tree`: directories recreated,
everything else linked — the extractor never writes into an existing inode, it unlinks
and creates), filled by the caller, then swapped with ``diff/<id>`` in one
``renameat2(RENAME_EXCHANGE)`` (:meth:`LayerSwap.commit`, under the store lock); the old
tree is deleted. Any error before the swap leaves ``diff/<id>`` as it was; a dead
process's staging directory is removed by recovery.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from aufs._sys import safefs
from aufs._sys.files import list_xattrs, rmtree
from aufs.errors import DriverError, LayerInUseError

if TYPE_CHECKING:
    from aufs.store.layout import Layout

__all__ = ["DIR_FLAG", "LayerSwap", "clone_tree", "discard", "name", "owner"]

DIR_FLAG = 1  # a directory, in clone_tree's map (the extractor's ``made`` flags)


def name(kind: str, *parts: str) -> str:
    """The staging name for ``kind`` (``apply``, ``probe-overlay``, …): ``kind``, the
    ``parts``, and this process's pid last."""
    return "-".join((kind, *parts, str(os.getpid())))


def owner(name: str) -> int | None:
    """The pid a staging name ends in (``…-<pid>``), or None."""
    pid_text = name.rsplit("-", 1)[-1]
    if not (pid_text.isascii() and pid_text.isdigit() and len(pid_text) < 8):
        return None  # a name from disk: no pid 0 (our group), none past pid_max
    pid = int(pid_text)
    return pid if 0 < pid <= _PID_MAX else None


_PID_MAX = 1 << 22  # Linux's largest pid_max


def discard(path: str) -> None:
    """Remove the tree at ``path`` (never following a symlink nor crossing a mount)."""
    rmtree(path)


class LayerSwap:
    """A staging clone of ``diff/<id>`` to fill through :attr:`fd`, then swap in.

    ``with LayerSwap(layout, id) as swap:`` clones the layer (:attr:`made` lists every
    path below it, as :func:`clone_tree` returns them); :meth:`commit`, called with the
    store lock held, swaps the clone in; leaving the block removes what is left in
    staging: the old tree once swapped, else the unfinished clone.
    """

    def __init__(self, layout: Layout, id: str) -> None:
        self.id = id
        self.diff = layout.diff(id)  # not a migration's symlink: the caller checks
        self._layout = layout
        self.staging_dir = layout.staging_dir
        self.path = layout.staging(name("apply", id, str(threading.get_ident())))
        self.made: dict[str, int] = {}
        self.fd = -1
        self._seed_ino = 0

    def __enter__(self) -> LayerSwap:
        os.makedirs(self.staging_dir, exist_ok=True)
        discard(self.path)  # our own leftover (same pid and thread): never a live apply
        try:
            os.mkdir(self.path, 0o700)
            self._seed_ino = os.lstat(self.diff).st_ino
            self.made = clone_tree(self.diff, self.path)
            self.fd = os.open(self.path, safefs.O_DIR)
        except BaseException:
            self._discard()
            raise
        return self

    def companion(self, kind: str) -> str:
        """A staging path for a file built beside the clone (ours to remove)."""
        path = self._layout.staging(name(kind, self.id, str(threading.get_ident())))
        discard(path)  # our own leftover (same pid and thread)
        return path

    def commit(self) -> None:
        """Swap the clone with ``diff/<id>`` (hold the store lock); LayerInUseError if
        another apply replaced the layer since the clone was made."""
        self._close()
        if os.lstat(self.diff).st_ino != self._seed_ino:
            raise LayerInUseError(f"layer {self.id} was changed by another apply meanwhile")
        safefs.exchange(self.path, self.diff)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()
        self._discard()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _discard(self) -> None:
        # A failed removal must not hide the outcome; recovery removes it later.
        with contextlib.suppress(OSError):
            discard(self.path)


def clone_tree(src: str, dst: str) -> dict[str, int]:
    """Make the empty directory ``dst`` a clone of ``src``: directories recreated with their
    owner, mode, xattrs and times; every other entry hard-linked. Returns every path
    below ``dst`` with its :data:`DIR_FLAG` (0 for the others)."""
    made: dict[str, int] = {}
    sfd = os.open(src, safefs.O_DIR)
    try:
        dfd = os.open(dst, safefs.O_DIR)
        try:
            st = os.fstat(sfd)
            _clone_dir(sfd, dfd, "", made, st.st_dev)
            _copy_dir_meta(st, sfd, dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return made


def _clone_dir(sfd: int, dfd: int, rel: str, made: dict[str, int], dev: int) -> None:
    with os.scandir(sfd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        path = f"{rel}/{name}" if rel else name
        if not is_dir:
            os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            made[path] = 0
            continue
        made[path] = DIR_FLAG
        os.mkdir(name, 0o700, dir_fd=dfd)
        sub_s = safefs.open_dir_at(sfd, name)
        try:
            sub_d = safefs.open_dir_at(dfd, name)
            try:
                st = os.fstat(sub_s)
                if st.st_dev != dev:
                    raise DriverError(f"a filesystem is mounted inside the layer at {path}")
                _clone_dir(sub_s, sub_d, path, made, dev)
                _copy_dir_meta(st, sub_s, sub_d)
            finally:
                os.close(sub_d)
        finally:
            os.close(sub_s)


def _copy_dir_meta(st: os.stat_result, sfd: int, dfd: int) -> None:
    """Give ``dfd`` the owner, xattrs, mode and times of ``sfd`` (whose stat is ``st``)."""
    os.fchown(dfd, st.st_uid, st.st_gid)
    for name in list_xattrs(sfd):
        with contextlib.suppress(OSError):
            os.setxattr(dfd, name, os.getxattr(sfd, name))
    os.fchmod(dfd, stat.S_IMODE(st.st_mode))
    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
