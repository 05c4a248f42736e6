"""Kernel AUFS: Docker's own mount, exactly.

``br:<rw>=rw:<ro>=ro+wh:…`` clipped to one page (room kept for ``dio,xino=…`` and the
SELinux label), the remaining branches added by ``MS_REMOUNT`` ``append:`` calls,
``dirperm1`` where a probe mount accepts it, ``auplink <target> flush`` before unmount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from aufs._sys import fsinfo
from aufs._sys import mount as sysmount
from aufs._sys.files import rmtree
from aufs.errors import AufsNotSupportedError, IncompatibleFSError
from aufs.store import staging
from aufs.store.layout import Layout
from aufs.union.base import Branches, MountSpec

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
    """Docker's ``aufsMount`` as data: the first mount, then one remount per extra branch."""
    offset = 54 + (len("dirperm1") if dirperm1 else 0)
    room = page_size - len(label) - offset  # room for xino & mountLabel
    branches = f"br:{rw}=rw"
    i = 0
    while i < len(lowers):
        layer = f":{lowers[i]}=ro+wh"
        if len(branches) + len(layer) > room:
            break
        branches += layer
        i += 1
    opts = f"dio,xino={XINO}" + (",dirperm1" if dirperm1 else "")
    specs = [MountSpec("aufs", "none", target, (format_mount_label(f"{branches},{opts}", label),))]
    for ro in lowers[i:]:
        data = format_mount_label(f"append:{ro}=ro+wh", label)
        specs.append(MountSpec("aufs", "none", target, (data,), flags=sysmount.MS_REMOUNT))
    return specs


@dataclass(frozen=True, slots=True)
class AufsCaps:
    dirperm1: bool
    auplink: str | None
    page_size: int = 4096


class AufsEngine:
    name = "aufs"
    reads = frozenset({"aufs"})
    native = "aufs"

    def __init__(self, layout: Layout, caps: AufsCaps) -> None:
        self.layout = layout
        self.caps = caps

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        return aufs_specs(branches.target, branches.rw, branches.lowers, branches.label,
                          dirperm1=self.caps.dirperm1, page_size=self.caps.page_size)

    def mount(self, branches: Branches) -> None:
        specs = self.mount_specs(branches)
        try:
            for spec in specs:
                sysmount.run(spec)
        except OSError:
            with contextlib.suppress(OSError):
                unmount(branches.target, self.caps.auplink)
            raise

    def unmount(self, target: str, rw: str | None = None, lowers: Sequence[str] = ()) -> None:
        unmount(target, self.caps.auplink)

    def describe(self) -> list[tuple[str, str]]:
        return [("auplink", self.caps.auplink or "not found")]

    def forget(self, rw: str) -> None:
        pass  # nothing kept per layer


def unmount(target: str, auplink: str | None = None) -> None:
    """The seed's ``Unmount``: ``auplink <target> flush`` where it exists, then umount."""
    if auplink is None:
        auplink = shutil.which("auplink")
    if auplink is not None:
        subprocess.run([auplink, target, "flush"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    sysmount.unmount(target)


def supports_aufs() -> bool:
    """Try to load the module, then look for ``aufs`` in /proc/filesystems."""
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run([modprobe, "aufs"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return fsinfo.in_proc_filesystems("aufs")


def probe(layout: Layout, magic: int) -> AufsEngine:
    if not supports_aufs():
        raise AufsNotSupportedError()
    if magic in INCOMPATIBLE:
        raise IncompatibleFSError(f"AUFS cannot use a store on {INCOMPATIBLE[magic]}")
    auplink = shutil.which("auplink")
    return AufsEngine(layout, AufsCaps(dirperm1=_probe_dirperm1(layout, auplink),
                                       auplink=auplink, page_size=os.sysconf("SC_PAGESIZE")))


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
