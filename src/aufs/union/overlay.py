"""Kernel overlayfs: the fast engine. Reads and writes overlay-format whiteouts.

Long chains: with the new mount API (``fsconfig`` ``lowerdir+``, Linux 6.8+) each lower
layer is one call and there is no page limit. Without it, options that do not fit in a
page are shortened Docker-overlay2-style: short symlinks in ``.aufs/l`` and paths
relative to that directory, mounted from a child whose working directory it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aufs._sys import fsinfo
from aufs._sys import mount as sysmount
from aufs._sys.files import ensure_dir, rmtree
from aufs.errors import ChainTooLongError, DriverError, IncompatibleFSError, NotSupportedError
from aufs.store import staging
from aufs.store.layout import Layout
from aufs.union.base import (
    Branches,
    MountMethod,
    MountSpec,
    escape_overlay_path,
    joined_length,
    selinux_option,
)

if TYPE_CHECKING:
    from aufs.whiteout import WhiteoutFormat

# Backing filesystems overlayfs cannot use for an upper dir (as Docker's overlay2).
INCOMPATIBLE = {
    fsinfo.MAGIC_AUFS: "aufs",
    fsinfo.MAGIC_ZFS: "zfs",
    fsinfo.MAGIC_OVERLAY: "overlayfs",
    fsinfo.MAGIC_ECRYPTFS: "ecryptfs",
}
# Options that keep the upper dir a plain diff (no redirects, no metacopy, no index).
DIFF_SAFE_OPTIONS = ("index=off", "redirect_dir=off", "metacopy=off")
MAX_LOWERS = 500


@dataclass(frozen=True, slots=True)
class OverlayCaps:
    new_api: bool                      # fsconfig lowerdir+ works
    extra_options: tuple[str, ...]     # DIFF_SAFE_OPTIONS the kernel accepts
    page_size: int = 4096


class NeedsShortNamesError(ValueError):
    """mount(2) options for the chain exceed a page: short link names are needed."""


def overlay_specs(b: Branches, caps: OverlayCaps, links_dir: str = "",
                  short_names: Sequence[str] = ()) -> list[MountSpec]:
    """The mount for ``b``. Pure: ``short_names`` are the link names in ``links_dir``
    for ``b.lowers`` (only needed when the options do not fit in a page)."""
    if len(b.lowers) > MAX_LOWERS:
        raise ChainTooLongError(
            f"overlayfs stacks at most {MAX_LOWERS} lower layers, not {len(b.lowers)}")
    if caps.new_api:
        # One fsconfig() per option: values are taken whole, so nothing is escaped and
        # the SELinux context is not quoted (quotes are stripped only from mount(2) data).
        label = (f"context={b.label}",) if b.label else ()
        opts = (*(f"lowerdir+={p}" for p in b.lowers), f"upperdir={b.rw}",
                f"workdir={b.work}", *caps.extra_options, *label)
        return [MountSpec("overlay", "overlay", b.target, opts, method=MountMethod.FSCONFIG)]
    tail = (*caps.extra_options, *selinux_option(b.label))
    lower = ":".join(escape_overlay_path(p) for p in b.lowers)
    opts = (f"lowerdir={lower}", f"upperdir={escape_overlay_path(b.rw)}",
            f"workdir={escape_overlay_path(b.work)}", *tail)
    if joined_length(opts) < caps.page_size:
        return [MountSpec("overlay", "overlay", b.target, opts)]
    if not links_dir or len(short_names) != len(b.lowers):
        raise NeedsShortNamesError(
            f"overlay mount options exceed a page ({joined_length(opts)} bytes): "
            "short link names are needed")
    rel = (f"lowerdir={':'.join(short_names)}",
           f"upperdir={escape_overlay_path(os.path.relpath(b.rw, links_dir))}",
           f"workdir={escape_overlay_path(os.path.relpath(b.work, links_dir))}", *tail)
    if joined_length(rel) >= caps.page_size:
        raise ChainTooLongError(
            f"overlay mount options exceed a page even with short links ({joined_length(rel)} "
            "bytes); this kernel lacks the new mount API that would take them")
    return [MountSpec("overlay", "overlay", b.target, rel, cwd=links_dir)]


def needs_short_names(b: Branches, caps: OverlayCaps) -> bool:
    """True if ``b`` mounts only with short link names (mount(2) and over a page). Pure."""
    try:
        overlay_specs(b, caps)
    except NeedsShortNamesError:
        return True
    return False


SHORT_NAME_LENGTHS = (6, 10, 32)


def short_name(layer_dir: str, length: int = 6) -> str:
    return hashlib.blake2b(layer_dir.encode(), digest_size=16).hexdigest()[:length]


class OverlayEngine:
    name = "overlay"
    reads = frozenset({"overlay"})
    native = "overlay"
    dirperm1 = False

    def __init__(self, layout: Layout, caps: OverlayCaps) -> None:
        self.layout = layout
        self.caps = caps

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        return overlay_specs(branches, self.caps, self.layout.links_dir,
                             self._short_names(branches.lowers, create=False))

    def clear(self, target: str) -> None:
        pass  # a mount(2) is done or not when its caller dies

    def forget(self, rw: str) -> None:
        """Remove the short link to ``rw``, if one was made (the lock is held)."""
        target = os.path.relpath(rw, self.layout.links_dir)
        for length in SHORT_NAME_LENGTHS:
            link = self.layout.link(short_name(rw, length))
            try:
                if os.readlink(link) == target:
                    os.unlink(link)
                    return
            except FileNotFoundError:
                return  # names are tried in order: a free one ends the search
            except OSError:
                continue

    def _short_names(self, lowers: Sequence[str], *, create: bool) -> list[str]:
        """Names in ``.aufs/l`` of links to ``lowers`` (made if ``create``; the lock is held).

        A name is a hash of the diff path; if another path holds it, a longer one is used.
        """
        names = []
        for path in lowers:
            target = os.path.relpath(path, self.layout.links_dir)
            for length in SHORT_NAME_LENGTHS:
                name = short_name(path, length)
                try:
                    if os.readlink(self.layout.link(name)) == target:
                        break
                except FileNotFoundError:
                    if create:
                        os.symlink(target, self.layout.link(name))
                    break
            else:
                raise DriverError(f"no free short link name for {path} in {self.layout.links_dir}")
            names.append(name)
        return names

    def mount(self, branches: Branches) -> None:
        ensure_dir(branches.work, 0o700)
        try:
            specs = overlay_specs(branches, self.caps)
        except NeedsShortNamesError:  # mount(2) and over a page
            ensure_dir(self.layout.links_dir, 0o700)
            names = self._short_names(branches.lowers, create=True)
            specs = overlay_specs(branches, self.caps, self.layout.links_dir, names)
        for spec in specs:
            sysmount.run(spec)

    def unmount(self, target: str, rw: str | None = None, lowers: Sequence[str] = ()) -> None:
        sysmount.unmount(target)

    def matches(self, branches: Branches) -> bool:
        return True  # one mount call builds the whole union, or none

    def describe(self) -> list[tuple[str, str]]:
        api = "fsconfig lowerdir+" if self.caps.new_api else "mount(2)"
        return [("Mount API", api), ("Overlay Options", ",".join(self.caps.extra_options))]


def probe(layout: Layout, magic: int, store_format: WhiteoutFormat, *,
          new_api: bool | None = None) -> OverlayEngine:
    """Prove overlayfs works here by mounting a scratch union; raise NotSupportedError."""
    if magic in INCOMPATIBLE:
        raise IncompatibleFSError(
            f"overlayfs cannot use a store on {INCOMPATIBLE[magic]} ({layout.root})")
    if not fsinfo.in_proc_filesystems("overlay"):
        raise NotSupportedError("overlay is not in /proc/filesystems")
    scratch = layout.staging(staging.name("probe-overlay"))
    rmtree(scratch)
    os.makedirs(scratch)
    try:
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(f"{scratch}/{d}")
        with open(f"{scratch}/lower/f", "wb"):
            pass
        b = Branches(target=f"{scratch}/merged", rw=f"{scratch}/upper",
                     lowers=(f"{scratch}/lower",), work=f"{scratch}/work")
        accepted: tuple[str, ...] = DIFF_SAFE_OPTIONS
        if not _try_mount(b, accepted):  # an older kernel: keep the options it knows
            accepted = tuple(o for o in DIFF_SAFE_OPTIONS if _try_mount(b, (o,)))
            if not _try_mount(b, accepted):
                raise NotSupportedError(f"a test overlay mount failed in {scratch}")
        has_new = _try_mount(b, accepted, new_api=True) if new_api is None else new_api
        return OverlayEngine(layout, OverlayCaps(new_api=has_new, extra_options=accepted,
                                                 page_size=os.sysconf("SC_PAGESIZE")))
    finally:
        with contextlib.suppress(OSError):
            rmtree(scratch)


def _try_mount(b: Branches, extra: tuple[str, ...], *, new_api: bool = False) -> bool:
    spec = overlay_specs(b, OverlayCaps(new_api=new_api, extra_options=extra))[0]
    try:
        sysmount.run(spec)
    except OSError:
        return False
    sysmount.unmount(b.target)
    return True
