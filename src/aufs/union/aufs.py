"""Kernel AUFS: Docker's own mount, exactly.

``br:<rw>=rw:<ro>=ro+wh:…`` clipped to one page (room kept for ``dio,xino=…`` and the
SELinux label), the remaining branches added by ``MS_REMOUNT`` ``append:`` calls,
``dirperm1`` where a probe mount accepts it, pseudo-links flushed before unmount
(``auplink <target> flush``, or our own flush: :mod:`aufs.union.aufs_plink`).

A chain longer than the kernel's branch limit is refused before anything is mounted
where the limit is known (``/sys/fs/aufs/config``), else at the first ``ENOSPC``, after
unmounting what was built. A union found mounted is reused only if its branches are
exactly the chain: a process killed between the remounts leaves one with only some.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aufs._sys import fsinfo, mountinfo
from aufs._sys import mount as sysmount
from aufs._sys.files import rmtree
from aufs.errors import AufsNotSupportedError, IncompatibleFSError
from aufs.store import staging
from aufs.store.layout import Layout
from aufs.union import aufs_kernel, aufs_plink
from aufs.union.base import Branches, ChainTooLongError, MountSpec, selinux_option

if TYPE_CHECKING:
    from aufs.whiteout import WhiteoutFormat

XINO = "/dev/shm/aufs.xino"
INCOMPATIBLE = {fsinfo.MAGIC_BTRFS: "btrfs", fsinfo.MAGIC_AUFS: "aufs",
                fsinfo.MAGIC_ECRYPTFS: "ecryptfs"}


def format_mount_label(src: str, label: str) -> str:
    """libcontainer's ``label.FormatMountLabel``: append ``context="label"``."""
    if not label:
        return src
    return f'context="{label}"' if not src else f'{src},context="{label}"'


def aufs_specs(target: str, rw: str, lowers: Sequence[str], label: str = "", *,
               dirperm1: bool = False, page_size: int = 4096) -> list[MountSpec]:
    """Docker's ``aufsMount`` as data: the first mount, then one remount per extra branch.

    Lengths are bytes, as Go's ``len`` and the kernel's one page count them: a root or
    label outside ASCII takes more bytes than characters."""
    offset = 54 + (len("dirperm1") if dirperm1 else 0)
    room = page_size - _bytes(label) - offset  # room for xino & mountLabel
    branches = f"br:{rw}=rw"
    used = _bytes(branches)
    i = 0
    while i < len(lowers):
        layer = f":{lowers[i]}=ro+wh"
        size = _bytes(layer)
        if used + size > room:
            break
        branches += layer
        used += size
        i += 1
    # One option an element, as every engine's specs (the kernel gets them joined by
    # commas: Docker's data string, byte for byte).
    opts = ("dio", f"xino={XINO}", *(("dirperm1",) if dirperm1 else ()))
    specs = [MountSpec("aufs", "none", target, (branches, *opts, *selinux_option(label)))]
    for ro in lowers[i:]:
        specs.append(MountSpec("aufs", "none", target,
                               (f"append:{ro}=ro+wh", *selinux_option(label)),
                               flags=sysmount.MS_REMOUNT))
    return specs


def _bytes(text: str) -> int:
    return len(os.fsencode(text))


def branch_count(spec: MountSpec) -> int:
    """Branches a spec of :func:`aufs_specs` stacks (``br:a=rw:b=ro+wh`` 2, ``append:`` 1).
    Pure."""
    data = spec.data
    if data.startswith("append:"):
        return 1
    # AUFS splits the list on ":" and "," (no branch path holds either); a path may hold
    # "=rw" or "=ro+wh" itself.
    return data.split(",", 1)[0].count(":")


def check_chain(lowers: int, branch_max: int | None) -> None:
    """Refuse a layer over ``lowers`` parents where the kernel's limit is known. Pure."""
    if branch_max is not None and lowers + 1 > branch_max:
        raise ChainTooLongError(too_long_message(lowers, branch_max))


def too_long_message(lowers: int, branch_max: int) -> str:
    return (f"AUFS stacks at most {branch_max} branches (the rw branch and "
            f"{branch_max - 1} parent layers) on this kernel, and this layer has "
            f"{lowers} parent layers")


@dataclass(frozen=True, slots=True)
class AufsCaps:
    dirperm1: bool
    auplink: str | None
    page_size: int = 4096
    branch_max: int | None = None      # None: not said by the kernel (AUFS built in)
    plink_maint: bool = True           # /proc/fs/aufs/plink_maint exists


class AufsEngine:
    name = "aufs"
    reads = frozenset({"aufs"})
    native = "aufs"

    def __init__(self, layout: Layout, caps: AufsCaps) -> None:
        self.layout = layout
        self.caps = caps

    @property
    def dirperm1(self) -> bool:
        return self.caps.dirperm1

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        return aufs_specs(branches.target, branches.rw, branches.lowers, branches.label,
                          dirperm1=self.caps.dirperm1, page_size=self.caps.page_size)

    def mount(self, branches: Branches) -> None:
        check_chain(len(branches.lowers), self.caps.branch_max)
        specs = self.mount_specs(branches)
        done = 0
        try:
            for spec in specs:
                sysmount.run(spec)
                done += branch_count(spec)
        except BaseException as exc:  # a signal between two appends must not leave half a stack
            with contextlib.suppress(OSError):
                unmount(branches.target, self.caps.auplink)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                # one branch more than the kernel stacks
                limit = done or self.caps.branch_max or aufs_kernel.DEFAULT_BRANCH_MAX
                raise ChainTooLongError(too_long_message(len(branches.lowers), limit)) from exc
            raise

    def matches(self, branches: Branches) -> bool:
        """Are the branches of the union mounted at ``branches.target`` exactly these?"""
        entry = mountinfo.top_at(mountinfo.read(), branches.target)
        if entry is None or entry.fstype != "aufs":
            return False
        si = aufs_kernel.si_of(entry.super_options)
        if si is None:
            return False
        found = aufs_kernel.read_branches(si, branches.target)
        if aufs_kernel.is_exactly(found, branches.rw, branches.lowers):
            return True
        # The kernel shows a branch by its resolved path (a layer migrated by symlink).
        real = os.path.realpath
        return aufs_kernel.is_exactly(found, real(branches.rw), [real(p) for p in branches.lowers])

    def unmount(self, target: str, rw: str | None = None, lowers: Sequence[str] = ()) -> None:
        unmount(target, self.caps.auplink)

    def describe(self) -> list[tuple[str, str]]:
        flush = aufs_plink.flush_method(self.caps.auplink, self.caps.plink_maint)
        limit = self.caps.branch_max
        return [("auplink", self.caps.auplink or "not found"),
                ("Pseudo-link Flush", flush.value),
                ("Branch Limit", str(limit) if limit else "not said (ENOSPC is the limit)")]

    def clear(self, target: str) -> None:
        pass  # a mount(2) is done or not when its caller dies

    def forget(self, rw: str) -> None:
        pass  # nothing kept per layer


def unmount(target: str, auplink: str | None = None) -> None:
    """The seed's ``Unmount``: flush the pseudo-links (``auplink <target> flush`` where it
    exists, else our own), then umount. As Docker, a failed flush does not stop it."""
    if auplink is None:
        auplink = shutil.which("auplink")
    with contextlib.suppress(OSError, ValueError):
        aufs_plink.flush(target, auplink)
    sysmount.unmount(target)


UID_MAP = "/proc/self/uid_map"
NESTED_MESSAGE = "AUFS cannot be used in non-init user namespace"  # Docker's ErrAufsNested


def in_user_namespace(uid_map: str) -> bool:
    """Docker's ``RunningInUserNS`` from the text of ``/proc/self/uid_map``: the initial
    namespace maps the whole range, ``0 0 4294967295``. Pure."""
    first = uid_map.split("\n", 1)[0].split()
    return first != ["0", "0", "4294967295"] and bool(first)


def _in_user_namespace() -> bool:
    try:
        with open(UID_MAP, encoding="ascii") as f:
            return in_user_namespace(f.read())
    except (OSError, ValueError):
        return False  # no user namespaces in this kernel


def supports_aufs() -> bool:
    """Try to load the module, then look for ``aufs`` in /proc/filesystems."""
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run([modprobe, "aufs"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return fsinfo.in_proc_filesystems("aufs")


def probe(layout: Layout, magic: int, store_format: WhiteoutFormat) -> AufsEngine:
    """Kernel AUFS, if the kernel has it and the store's filesystem suits it (the
    store's whiteout format is AUFS's own; every engine's probe takes it)."""
    if not supports_aufs():
        raise AufsNotSupportedError()
    if _in_user_namespace():
        # The host's AUFS is listed, but mounts it (and the dirperm1 probe) would all fail:
        # refused as Docker 20.10 does, so that auto goes on to an engine that works.
        raise AufsNotSupportedError(NESTED_MESSAGE)
    if magic in INCOMPATIBLE:
        raise IncompatibleFSError(f"AUFS cannot use a store on {INCOMPATIBLE[magic]}")
    auplink = shutil.which("auplink")
    return AufsEngine(layout, AufsCaps(dirperm1=_probe_dirperm1(layout, auplink),
                                       auplink=auplink, page_size=os.sysconf("SC_PAGESIZE"),
                                       branch_max=aufs_kernel.read_branch_max(),
                                       plink_maint=os.path.exists(aufs_kernel.PLINK_MAINT)))


def _probe_dirperm1(layout: Layout, auplink: str | None) -> bool:
    """Docker's ``useDirperm``: does a real mount accept ``dirperm1``?"""
    scratch = layout.staging(staging.name("probe-aufs"))
    rmtree(scratch)
    os.makedirs(f"{scratch}/base")
    os.mkdir(f"{scratch}/union")
    try:
        spec = MountSpec("aufs", "none", f"{scratch}/union",
                         (f"br:{scratch}/base", "dirperm1", f"xino={XINO}"))
        try:
            sysmount.run(spec)
        except OSError:
            return False
        unmount(f"{scratch}/union", auplink)
        return True
    finally:
        with contextlib.suppress(OSError):
            rmtree(scratch)
