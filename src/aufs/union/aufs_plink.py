"""Flushing AUFS pseudo-links before an unmount, with or without ``auplink``.

A hard link made through the union to a file of a read-only branch is kept by AUFS as a
*pseudo-link*: the file is copied up once, to ``.wh..wh.plnk/<ino>.<branch ino>`` in the
writable branch, and every name of it is served from there — until the mount goes. Only
a flush turns it into real hard links in the rw branch (Docker's driver runs
``auplink MNT flush`` before each unmount; without it a diff of the layer holds two
different files). Where ``auplink`` (aufs-tools) is not installed we do what its
``plink.c`` does:

1. enter pseudo-link maintenance: write ``si=<id>`` to ``/proc/fs/aufs/plink_maint`` and
   keep it open (no other process adds a pseudo-link meanwhile);
2. collect the union inode numbers named in each writable branch's ``.wh..wh.plnk/``;
3. walk the union, and ``lchown(path, -1, -1)`` every non-directory of such an inode: a
   change that changes nothing, but makes AUFS copy the name up — as a hard link to the
   pseudo-link, in the rw branch;
4. write ``clean`` to the maintenance file (the kernel drops its pseudo-link list), unlink
   the names collected in 2, and close the file (maintenance ends).

Without ``/proc/fs/aufs/plink_maint`` the list is dropped by remounting ``noplink`` then
``plink`` instead. (``remount,clean_plink``, which older tools used, is accepted and
ignored by aufs 6.x: ``fsctx.c`` maps it to ``Opt_ignore``.)
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence

from aufs._sys import mount as sysmount
from aufs._sys import mountinfo
from aufs._sys.deep import walk_dirs
from aufs.union import aufs_kernel
from aufs.union.aufs_kernel import PLINK_DIR, Branch
from aufs.union.base import MountSpec


class Flush(enum.Enum):
    AUPLINK = "auplink"
    MAINT = "built in (/proc/fs/aufs/plink_maint)"
    REMOUNT = "built in (remount noplink,plink)"


def flush_method(auplink: str | None, maint_exists: bool) -> Flush:
    """``auplink`` where installed (Docker's way), else our own flush. Pure."""
    if auplink is not None:
        return Flush.AUPLINK
    return Flush.MAINT if maint_exists else Flush.REMOUNT


def clean_specs(target: str) -> list[MountSpec]:
    """Drop the kernel's pseudo-link list without the maintenance file. Pure."""
    return [MountSpec("aufs", "none", target, (opt,), flags=sysmount.MS_REMOUNT)
            for opt in ("noplink", "plink")]


def copy_up_names(entries: Iterable[tuple[str, int, bool]], inodes: set[int]) -> list[str]:
    """Of ``(name, inode, is_dir)``, the names to copy up: non-directories whose union
    inode has a pseudo-link. Pure."""
    return [name for name, ino, is_dir in entries if not is_dir and ino in inodes]


def plink_files(branches: Sequence[Branch]) -> list[str]:
    """Paths of the pseudo-link files in the writable branches."""
    out: list[str] = []
    for br in branches:
        if not br.writable:
            continue
        directory = os.path.join(br.path, PLINK_DIR)
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        out.extend(os.path.join(directory, n) for n in sorted(names))
    return out


def copy_up(target: str, inodes: set[int]) -> int:
    """Make AUFS copy up every name of ``inodes`` in the union at ``target`` (step 3)."""
    done = 0
    for fd, _, entries in walk_dirs(target):
        found = [(e.name, e.stat(follow_symlinks=False).st_ino, e.is_dir(follow_symlinks=False))
                 for e in entries]
        for name in copy_up_names(found, inodes):
            os.chown(name, -1, -1, dir_fd=fd, follow_symlinks=False)
            done += 1
    return done


@contextlib.contextmanager
def maintenance(si: str, path: str = aufs_kernel.PLINK_MAINT) -> Iterator[int]:
    """Pseudo-link maintenance of the mount ``si`` while the block runs (step 1)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, f"si={si}".encode())
        yield fd
    finally:
        os.close(fd)


def flush_branches(target: str, si: str, branches: Sequence[Branch], *,
                   maint: str = aufs_kernel.PLINK_MAINT,
                   remount: Callable[[MountSpec], object] = sysmount.run) -> Flush:
    """Steps 1-4 for the union at ``target`` (mount ``si``, its ``branches``)."""
    if not os.path.exists(maint):
        files = plink_files(branches)
        inodes = aufs_kernel.plink_inodes(os.path.basename(f) for f in files)
        if not inodes:
            return Flush.REMOUNT
        copy_up(target, inodes)
        for spec in clean_specs(target):
            remount(spec)
        _unlink(files)
        return Flush.REMOUNT
    with maintenance(si, maint) as fd:
        files = plink_files(branches)
        inodes = aufs_kernel.plink_inodes(os.path.basename(f) for f in files)
        if inodes:  # as auplink: nothing to clean where no pseudo-link was made
            copy_up(target, inodes)
            os.write(fd, b"clean")
            _unlink(files)
    return Flush.MAINT


def _unlink(files: Iterable[str]) -> None:
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


AUPLINK_RETRIES = 5


def run_auplink(auplink: str, target: str, retries: int = AUPLINK_RETRIES) -> int:
    """``auplink <target> flush``; its exit status. As Docker (20.10's ``Unmount``), an
    exit status of EINVAL is tried again up to ``retries`` times: auplink did not find
    the target in the mount table, which the kernel cannot show whole while it changes."""
    argv = [auplink, target, "flush"]
    rc = errno.EINVAL
    for _ in range(retries + 1):
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, check=False).returncode
        if rc != errno.EINVAL:
            break
    return rc


def flush(target: str, auplink: str | None) -> Flush | None:
    """Flush the pseudo-links of the AUFS union at ``target``; None if it is not one or
    keeps none. As Docker does with ``auplink``, a failed flush does not stop the
    unmount that follows: the caller ignores an OSError."""
    entry = mountinfo.top_at(mountinfo.read(), target)  # what the unmount will remove
    if (entry is None or entry.fstype != "aufs"
            or not aufs_kernel.has_plinks(entry.super_options)):
        return None
    if auplink is not None:
        run_auplink(auplink, target)
        return Flush.AUPLINK
    si = aufs_kernel.si_of(entry.super_options)
    if si is None:
        raise OSError(0, "no si= among the AUFS mount's options", target)
    return flush_branches(target, si, aufs_kernel.read_branches(si, target))
