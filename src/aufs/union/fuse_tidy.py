"""What fuse-overlayfs leaves in a rw branch that must not stay there once it is unmounted.

Run on the rw branch after the daemon is gone, before its whiteouts are put into the
store's format:

- ``user.fuseoverlayfs.origin`` on a copied-up file names the lower path it came from.
  fuse-overlayfs (1.10, and the same code up to 1.16, the last C release) takes the
  *lower* file's inode as the copy's identity when it mounts the branch again; where that
  lower file has other hard links (``st_nlink > 1``) the copy and the other names become
  one inode, and reads serve the lower data padded with NUL bytes to the copy's size. The
  attribute is only fuse-overlayfs's inode-number bookkeeping (never exported), so it
  goes: a plain upper file mounts correctly.
- ``mkdir`` marks every new directory opaque — the ``trusted.overlay.opaque`` xattr and
  a ``.wh..wh..opq`` file (both: the daemon's signature; in a directory made at the top
  also a 0:0 device ``.wh..opq``). A directory that replaces nothing below needs no
  marker, and Docker shows one as a ``D`` line, so they go where no lower layer has a
  directory of that path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from aufs._sys.deep import walk_dirs
from aufs._sys.files import NO_XATTRS, list_xattrs
from aufs.whiteout import (
    OVERLAY_OPAQUE_XATTR,
    WH_META_PREFIX,
    WH_OPAQUE,
    WH_PREFIX,
    has_opaque_xattr,
    is_overlay_whiteout_mode,
)

ORIGIN_XATTR = "user.fuseoverlayfs.origin"
DAEMON_OPAQUE_DEVICE = WH_PREFIX + ".opq"  # the 0:0 device mkdir makes beside the marker


def has_directory_below(lowers: Sequence[str], rel: str) -> bool:
    """True if some lower layer has a directory at ``rel`` (not a symlink to one). An
    unreadable lower counts as having one: a marker kept is never wrong, only noisy."""
    for lower in lowers:
        try:
            if stat.S_ISDIR(os.lstat(os.path.join(lower, rel)).st_mode):
                return True
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return True
    return False


def is_daemon_opaque(xattr: bool, names: set[str]) -> bool:
    """The marker fuse-overlayfs's mkdir writes: the xattr and the ``.wh..wh..opq`` file,
    both (a marker from a layer tar is a file alone in an AUFS store, an xattr alone in
    an overlay one). Pure."""
    return xattr and WH_OPAQUE in names


def tidy(rw: str, lowers: Sequence[str], since: float | None = None) -> tuple[int, int]:
    """Drop origin attributes and needless opaque markers under ``rw`` (see the module).
    ``since``: when the daemon that wrote there started (epoch seconds); a copy-up puts
    its file into a directory, so only directories changed since then are searched for
    origins (None: all). No symlink is followed and no mount crossed. Returns (origins,
    markers) dropped."""
    origins = markers = 0
    for fd, rel, entries in walk_dirs(rw, _not_housekeeping):
        names = {e.name for e in entries}
        if (rel and WH_OPAQUE in names and is_daemon_opaque(has_opaque_xattr(fd), names)
                and not has_directory_below(lowers, rel)):
            os.unlink(WH_OPAQUE, dir_fd=fd)
            if DAEMON_OPAQUE_DEVICE in names and _is_device(fd):
                os.unlink(DAEMON_OPAQUE_DEVICE, dir_fd=fd)
            os.removexattr(fd, OVERLAY_OPAQUE_XATTR)
            markers += 1
        if not changed_since(os.fstat(fd).st_ctime, since):
            continue
        for e in entries:
            if e.is_file(follow_symlinks=False) and not e.name.startswith(WH_PREFIX):
                origins += _drop_origin(fd, e.name)
    return origins, markers


def _not_housekeeping(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(WH_META_PREFIX)


SLACK = 2.0  # seconds: btime is whole seconds, the start time in clock ticks


def changed_since(ctime: float, since: float | None) -> bool:
    """Might a directory of this ctime have got a copy-up from a daemon started at
    ``since``? (A wall clock stepped forward while the union was mounted defeats this
    by the size of the step.) Pure."""
    return since is None or ctime >= since - SLACK


def daemon_start(stat: bytes, boot_time: float, ticks: int) -> float:
    """Epoch seconds a process started, from its ``/proc/<pid>/stat`` (field 22, clock
    ticks after boot), the boot time (``btime`` of ``/proc/stat``) and ticks a second.
    Pure."""
    fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
    return boot_time + int(fields[19]) / ticks


def started_at(pidfd: int) -> float | None:
    """When the process of ``pidfd`` started, or None where /proc does not tell."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            pid = next(int(line.split()[1]) for line in f if line.startswith(b"Pid:"))
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return daemon_start(stat, boot, os.sysconf("SC_CLK_TCK"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _is_device(dir_fd: int) -> bool:
    try:
        st = os.stat(DAEMON_OPAQUE_DEVICE, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return is_overlay_whiteout_mode(st.st_mode, st.st_rdev)


def _drop_origin(dir_fd: int, name: str) -> int:
    path = f"/proc/self/fd/{dir_fd}/{name}"
    try:
        if ORIGIN_XATTR not in list_xattrs(path):
            return 0
        os.removexattr(path, ORIGIN_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in NO_XATTRS or exc.errno == errno.ENOENT:
            return 0
        raise
    return 1
