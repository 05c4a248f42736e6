"""Executes :class:`~aufs._sys.mountspec.MountSpec` and unmounts; the only module that mounts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from aufs._sys import daemon, libc
from aufs._sys.mountspec import MountMethod, MountSpec

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18

MNT_DETACH = 0x2

HELPER_START_TIMEOUT = 60.0  # seconds for a FUSE daemon to mount


class MountError(OSError):
    """A mount that failed; ``spec`` is what was asked, ``str()`` says both."""

    def __init__(self, err: int, message: str, spec: MountSpec) -> None:
        super().__init__(err, message, spec.target)
        self.spec = spec

    def __str__(self) -> str:
        return f"{self.strerror} [{self.spec}]"


def run(spec: MountSpec) -> int | None:
    """Issue one mount as described; raise :class:`MountError` on failure.

    Returns the pid of the daemon serving the mount (HELPER mounts), else None.
    """
    try:
        if spec.method is MountMethod.FSCONFIG:
            _fsconfig_mount(spec)
        elif spec.method is MountMethod.HELPER:
            return _helper_mount(spec)
        elif spec.cwd is not None:
            _relative_mount(spec)
        else:
            libc.mount(spec.source, spec.target, spec.fstype, spec.flags, spec.data or None)
    except MountError:
        raise
    except OSError as exc:
        raise MountError(exc.errno or 0, exc.strerror or str(exc), spec) from exc
    return None


def _fs_messages(fd: int) -> str:
    """The kernel's error log for an fs context (``e overlay: …`` lines)."""
    lines = []
    with contextlib.suppress(OSError):
        while True:
            msg = os.read(fd, 1024)
            if not msg:
                break
            lines.append(msg.decode(errors="replace").strip())
    return "; ".join(lines)


def _fsconfig_mount(spec: MountSpec) -> None:
    fsfd = libc.syscall("fsopen", libc.SYS_FSOPEN, spec.fstype.encode(), libc.FSOPEN_CLOEXEC)
    try:
        try:
            if spec.source:
                _fsconfig_option(fsfd, "source=" + spec.source)
            for opt in spec.options:
                _fsconfig_option(fsfd, opt)
            libc.syscall("fsconfig create", libc.SYS_FSCONFIG, fsfd, libc.FSCONFIG_CMD_CREATE,
                         None, None, 0)
        except OSError as exc:
            detail = _fs_messages(fsfd)
            msg = f"{exc.strerror}" + (f" ({detail})" if detail else "")
            raise MountError(exc.errno or 0, msg, spec) from exc
        attrs = 0x1 if spec.flags & MS_RDONLY else 0  # MOUNT_ATTR_RDONLY
        mfd = libc.syscall("fsmount", libc.SYS_FSMOUNT, fsfd, libc.FSMOUNT_CLOEXEC, attrs)
        try:
            libc.syscall("move_mount", libc.SYS_MOVE_MOUNT, mfd, b"", libc.AT_FDCWD,
                         os.fsencode(spec.target), libc.MOVE_MOUNT_F_EMPTY_PATH,
                         filename=spec.target)
        finally:
            os.close(mfd)
    finally:
        os.close(fsfd)


# A get of a layer 100 deep sets 100 options, the same ones at every get of it: each
# option's encoded form is kept by its text (at most _ENCODED_MAX of them).
_ENCODED: dict[str, tuple[int, bytes, bytes | None]] = {}
_ENCODED_MAX = 4096


def _fsconfig_option(fsfd: int, opt: str) -> None:
    """Set ``key=value`` (a string) or ``key`` (a flag) on the fs context ``fsfd``."""
    encoded = _ENCODED.get(opt)
    if encoded is None:
        key, sep, value = opt.partition("=")
        encoded = ((libc.FSCONFIG_SET_STRING, key.encode(), os.fsencode(value)) if sep
                   else (libc.FSCONFIG_SET_FLAG, key.encode(), None))
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        _ENCODED[opt] = encoded
    cmd, key_b, value_b = encoded
    libc.syscall("fsconfig", libc.SYS_FSCONFIG, fsfd, cmd, key_b, value_b, 0)  # bytes: char *


def _relative_mount(spec: MountSpec) -> None:
    """mount(2) with relative paths, issued from ``spec.cwd`` by a short-lived child.

    A chdir would change the whole process (and its threads); a child keeps it local.
    """
    code = (
        "import sys\nfrom aufs._sys import libc\n"
        "libc.mount(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, spec.source, spec.target, spec.fstype, str(spec.flags),
         spec.data],
        cwd=spec.cwd, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["mount failed"])[-1]
        raise MountError(0, last, spec)


def _helper_mount(spec: MountSpec) -> int:
    return daemon.spawn_mount(spec.argv, spec.target, HELPER_START_TIMEOUT)


def unmount(target: str, *, attempts: int = 50, delay: float = 0.02) -> None:
    """umount2 with a bounded retry on EBUSY; EINVAL/ENOENT mean "not mounted"."""
    for attempt in range(attempts):
        try:
            libc.umount2(target, 0)
            return
        except OSError as exc:
            if exc.errno in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
                return
            if exc.errno != 16 or attempt == attempts - 1:  # EBUSY
                raise
            time.sleep(delay)


def detach(target: str) -> None:
    """Lazy unmount (MNT_DETACH) of ``target``; only for mounts with nothing below them."""
    libc.umount2(target, MNT_DETACH)


def bind_private(path: str) -> bool:
    """Make ``path`` a private mount of its own (bind it onto itself if needed).

    Returns True if it made the bind, False if ``path`` already was a mount point.
    """
    from aufs._sys import mountinfo

    made = not mountinfo.is_mountpoint(path)
    if made:
        libc.mount(path, path, None, MS_BIND, None)
    libc.mount("none", path, None, MS_PRIVATE, None)
    return made
