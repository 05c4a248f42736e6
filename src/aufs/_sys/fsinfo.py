"""What filesystem a path lives on: ``statfs`` magic numbers and Docker's names for them."""

from __future__ import annotations

import ctypes
import os

from aufs._sys import libc

# Docker's graphdriver FsNames (daemon/graphdriver/driver_linux.go).
FS_NAMES: dict[int, str] = {
    0x61756673: "aufs",
    0x9123683E: "btrfs",
    0x28CD3D45: "cramfs",
    0xF15F: "ecryptfs",
    0x0000EF53: "extfs",
    0xF2F52010: "f2fs",
    0x65735546: "fuse",
    0x47504653: "gpfs",
    0x3153464A: "jfs",
    0x000072B6: "jffs2",
    0x00006969: "nfs",
    0x858458F6: "ramfs",
    0x52654973: "reiserfs",
    0x0000517B: "smb",
    0x73717368: "squashfs",
    0x01021994: "tmpfs",
    0xA501FCF5: "vxfs",
    0x58465342: "xfs",
    0x2FC12FC1: "zfs",
    0x794C7630: "overlayfs",
}

MAGIC_AUFS = 0x61756673
MAGIC_BTRFS = 0x9123683E
MAGIC_ECRYPTFS = 0xF15F
MAGIC_OVERLAY = 0x794C7630
MAGIC_ZFS = 0x2FC12FC1

_statfs = libc._libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_statfs.restype = ctypes.c_int


def fs_magic(path: str) -> int:
    """``statfs(path).f_type`` (the first word of struct statfs on every Linux ABI)."""
    buf = ctypes.create_string_buffer(256)
    if _statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def fs_name(magic: int) -> str:
    return FS_NAMES.get(magic, "<unknown>")


def in_proc_filesystems(name: str) -> bool:
    """Whether the kernel lists the filesystem type ``name`` (/proc/filesystems)."""
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1] == name for line in f if line.strip())
    except OSError:
        return False


def read_only(path: str) -> bool:
    """Is the filesystem holding ``path`` mounted read-only?"""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
