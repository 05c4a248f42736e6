"""A small ext4 filesystem on a loop device, made and destroyed by the caller's test.

Made with ``truncate`` + ``mkfs.ext4`` + ``losetup`` + ``mount``; on exit everything
mounted below it is unmounted (lazily if it must be), then it, then the loop device
is detached — whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.reliability import invariants


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "loop filesystems need root"
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control"
    return None


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@contextlib.contextmanager
def loop_fs(where: Path, size_mb: int, *, inodes: int | None = None,
            options: str = "", inode_size: int | None = None) -> Iterator[Path]:
    """Yield the mount point of a fresh ``size_mb`` MiB ext4 (no reserved blocks).
    ``inode_size`` 128: timestamps of whole seconds (as ext3's)."""
    image = where / "fs.img"
    mnt = where / "fs"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    mkfs = ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,nodiscard"]
    if inodes is not None:
        mkfs += ["-N", str(inodes)]
    if inode_size is not None:
        mkfs += ["-I", str(inode_size)]
    _run(*mkfs, str(image))
    dev = _run("losetup", "--find", "--show", str(image))
    try:
        _run("mount", *(["-o", options] if options else []), dev, str(mnt))
        try:
            yield mnt
        finally:
            unmount_all(mnt)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            image.unlink()


def unmount_all(mnt: Path) -> None:
    """Unmount everything at or below ``mnt``, deepest first."""
    for mp in reversed(invariants.mounts_under(str(mnt))):
        proc = subprocess.run(["umount", mp], capture_output=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def fill(fs: Path, leave: int = 0, name: str = "filler") -> Path:
    """Write a file on ``fs`` until at most ``leave`` bytes stay free; return it."""
    path = fs / name
    block = os.urandom(1 << 16)
    with open(path, "wb") as f:
        while True:
            free = free_bytes(fs)
            if free <= leave:
                break
            try:
                f.write(block[: min(len(block), max(free - leave, 4096))])
                f.flush()
            except OSError:
                break
        with contextlib.suppress(OSError):
            os.fsync(f.fileno())
    return path


def free_bytes(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize
