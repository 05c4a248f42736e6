"""fuse-overlayfs: works without kernel union support, reads AUFS ``.wh.`` whiteouts.

Its stores keep Docker's AUFS format on disk. While a layer is mounted the daemon
writes overlay-style whiteouts into the rw branch (0:0 devices, opaque xattrs); they
are turned into the store's format when the layer is unmounted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aufs._sys import daemon, fsinfo
from aufs._sys import mount as sysmount
from aufs._sys.files import ensure_dir, rmtree
from aufs.errors import IncompatibleFSError, NotSupportedError
from aufs.store import staging
from aufs.store.layout import Layout
from aufs.union import fuse_tidy
from aufs.union.base import Branches, MountMethod, MountSpec, escape_overlay_path
from aufs.whiteout import WhiteoutFormat

BINARY = "fuse-overlayfs"
INCOMPATIBLE = {fsinfo.MAGIC_AUFS: "aufs"}
DAEMON_EXIT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class FuseCaps:
    binary: str
    fusermount: str | None
    as_root: bool


def fuse_specs(b: Branches, caps: FuseCaps) -> list[MountSpec]:
    """The daemon invocation for ``b``. Pure."""
    opts = [
        "lowerdir=" + ":".join(escape_overlay_path(p) for p in b.lowers),
        f"upperdir={escape_overlay_path(b.rw)}",
        f"workdir={escape_overlay_path(b.work)}",
    ]
    if b.label:
        # libfuse splits -o on unescaped commas (MCS labels have them: "s0:c1,c2").
        label = b.label.replace("\\", "\\\\").replace(",", "\\,")
        opts.append(f'context="{label}"')
    # -f: the daemon stays in the foreground, a child of ours (see aufs._sys.daemon).
    argv = (caps.binary, "-f", "-o", ",".join(opts), b.target)
    return [MountSpec("fuse.fuse-overlayfs", "fuse-overlayfs", b.target, tuple(opts),
                      method=MountMethod.HELPER, argv=argv)]


class FuseOverlayEngine:
    name = "fuse-overlayfs"
    reads = frozenset({"aufs", "overlay"})
    native = "aufs"
    dirperm1 = False

    def __init__(self, layout: Layout, caps: FuseCaps, store_format: WhiteoutFormat) -> None:
        self.layout = layout
        self.caps = caps
        self.format = store_format

    def mount_specs(self, branches: Branches) -> list[MountSpec]:
        return fuse_specs(branches, self.caps)

    def mount(self, branches: Branches) -> None:
        ensure_dir(branches.work, 0o700)
        daemon.reap_exited()
        for spec in fuse_specs(branches, self.caps):
            sysmount.run(spec)  # the daemon is registered with its target as tag

    def unmount(self, target: str, rw: str | None = None, lowers: Sequence[str] = ()) -> None:
        fusermount = None if self.caps.as_root else self.caps.fusermount
        # While the daemon exits (on the other core): once a non-lazy unmount has
        # succeeded no system call is in flight on the union, so no whiteout or opaque
        # marker is still on its way; what the daemon may yet answer (release, forget)
        # writes none.
        unmount(target, fusermount,
                then=None if rw is None else lambda since: self._settle(rw, lowers, since))

    def _settle(self, rw: str, lowers: Sequence[str], since: float | None) -> None:
        """The rw branch once the daemon no longer writes: what fuse-overlayfs leaves that
        must not stay (:mod:`aufs.union.fuse_tidy`) goes, then its whiteouts are put into
        the store's format."""
        fuse_tidy.tidy(rw, lowers, since)
        self.format.normalize(rw)

    def matches(self, branches: Branches) -> bool:
        return True  # one mount call builds the whole union, or none

    def describe(self) -> list[tuple[str, str]]:
        return [("FUSE Helper", self.caps.binary)]

    def forget(self, rw: str) -> None:
        pass  # nothing kept per layer

    def clear(self, target: str) -> None:
        """A daemon serving ``target`` while nothing is mounted there is the child of a
        ``get`` killed before the mount was ready: it is killed, and if it mounted in
        between, that (now dead) mount is dropped."""
        fds = daemon.open_pidfds(daemon_pids(target))
        if not fds:
            return
        for fd in fds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        daemon.reap(fds, DAEMON_EXIT_TIMEOUT)
        with contextlib.suppress(OSError):  # EINVAL: it had not mounted
            sysmount.detach(target)


def unmount(target: str, fusermount: str | None = None,
            then: Callable[[float | None], object] | None = None) -> None:
    """Unmount the fuse-overlayfs union at ``target`` (``fusermount -u`` if given, else
    umount2), run ``then`` while its daemon exits — given when the daemon started (epoch
    seconds; None if unknown) —, and wait for the daemon (killed after
    ``DAEMON_EXIT_TIMEOUT`` seconds: never left running)."""
    daemons = daemon_pidfds(target)  # before the unmount: no pid reuse
    try:
        if fusermount is None:
            sysmount.unmount(target)
        else:
            _fusermount_unmount(fusermount, target)
    except BaseException:
        for fd in daemons:
            os.close(fd)
        raise
    try:
        if then is not None:
            then(fuse_tidy.started_at(daemons[0]) if len(daemons) == 1 else None)
    finally:
        daemon.reap(daemons, DAEMON_EXIT_TIMEOUT)
        daemon.reap_exited()  # and those another process unmounted: no zombies


def _fusermount_unmount(fusermount: str, target: str) -> None:
    import subprocess

    proc = subprocess.run([fusermount, "-u", target], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(16, proc.stderr.strip() or "fusermount -u failed", target)


def _daemons() -> Iterator[tuple[int, bytes]]:
    """(pid, mount point) of every running fuse-overlayfs daemon (its last argv word)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = [a for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if len(argv) >= 2 and os.path.basename(argv[0]) == b"fuse-overlayfs":
            yield int(name), argv[-1]


def daemon_pidfds(target: str) -> list[int]:
    """pidfds of the fuse-overlayfs daemons serving ``target``: the child this process
    started there, else whatever a scan of /proc finds (a mount made by another process)."""
    fd = daemon.child_pidfd(target)
    if fd is not None:
        return [fd]
    return daemon.open_pidfds(daemon_pids(target))


def daemon_pids(target: str) -> list[int]:
    """Pids of fuse-overlayfs daemons serving ``target``."""
    want = os.fsencode(target)
    return [pid for pid, mountpoint in _daemons() if mountpoint == want]


def daemon_pids_below(path: str) -> list[int]:
    """Pids of fuse-overlayfs daemons whose mount point is ``path`` or below it (by
    whole components: ``/tmp/pytest-5`` is no parent of ``/tmp/pytest-58``)."""
    want = os.fsencode(os.path.realpath(path))
    return [pid for pid, mountpoint in _daemons()
            if mountpoint == want or mountpoint.startswith(want + b"/")]


def probe(layout: Layout, magic: int, store_format: WhiteoutFormat) -> FuseOverlayEngine:
    """Prove fuse-overlayfs mounts here and hides a ``.wh.`` whiteout; else NotSupportedError."""
    if magic in INCOMPATIBLE:
        raise IncompatibleFSError(f"fuse-overlayfs cannot use a store on {INCOMPATIBLE[magic]}")
    binary = shutil.which(BINARY)
    if binary is None:
        raise NotSupportedError(f"{BINARY} is not installed (apt-get install fuse-overlayfs)")
    if not os.path.exists("/dev/fuse"):
        raise NotSupportedError("/dev/fuse does not exist")
    caps = FuseCaps(binary=binary, fusermount=shutil.which("fusermount3"),
                    as_root=os.geteuid() == 0)
    engine = FuseOverlayEngine(layout, caps, store_format)
    scratch = layout.staging(staging.name("probe-fuse"))
    rmtree(scratch)
    os.makedirs(scratch)
    try:
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(f"{scratch}/{d}")
        for name in ("kept", ".wh.gone"):
            with open(f"{scratch}/upper/{name}", "wb"):
                pass
        with open(f"{scratch}/lower/gone", "wb"):
            pass
        b = Branches(target=f"{scratch}/merged", rw=f"{scratch}/upper",
                     lowers=(f"{scratch}/lower",), work=f"{scratch}/work")
        try:
            engine.mount(b)
        except OSError as exc:
            raise NotSupportedError(f"a test fuse-overlayfs mount failed: {exc}") from exc
        try:
            visible = set(os.listdir(b.target))
        finally:
            engine.unmount(b.target)
        if visible != {"kept"}:
            raise NotSupportedError(
                f"{binary} does not read AUFS whiteouts (saw {sorted(visible)})")
        return engine
    finally:
        with contextlib.suppress(OSError):
            rmtree(scratch)
