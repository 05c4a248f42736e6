"""The archive benchmarks' inputs: a Debian root fs as a layer tarball, an upper layer
derived from it, and a large layer for the memory test.

- :func:`base_tarball`: ``debootstrap --variant=minbase bookworm`` (~200 MB, ~6,800
  entries), packed by GNU tar with ``--numeric-owner``, names relative and sorted.
  Built once and cached (``$AUFS_BENCH_CACHE``, default ``/var/cache/aufs-bench``).
- :func:`write_upper_tarball`: a layer over it with ~300 modified, ~200 added and ~100
  deleted files (``.wh.`` whiteouts), chosen deterministically from the base's members.
- :func:`write_big_tree`: a directory of large files (2 GiB by default).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aufs.whiteout import WH_PREFIX
from bench.common import BenchError, require_tools

DEFAULT_CACHE = "/var/cache/aufs-bench"
SUITE = "bookworm"
BASE_NAME = f"{SUITE}-minbase.tar"
UPPER_MTIME = 1_700_000_000
SEED = 20_240_601


def cache_dir() -> str:
    path = os.environ.get("AUFS_BENCH_CACHE", DEFAULT_CACHE)
    os.makedirs(path, exist_ok=True)
    return path


def base_tarball(*, mirror: str | None = None) -> str:
    """The cached base layer tarball; built with debootstrap on first use (minutes)."""
    cache = cache_dir()
    tar_path = os.path.join(cache, BASE_NAME)
    if os.path.exists(tar_path):
        return tar_path
    require_tools("debootstrap", "tar")
    build = os.path.join(cache, "build.tmp")
    root = os.path.join(build, "root")
    if not _debootstrap_done(root):
        shutil.rmtree(build, ignore_errors=True)
        os.makedirs(build)
        argv = ["debootstrap", "--variant=minbase", SUITE, root]
        if mirror:
            argv.append(mirror)
        print(f"bench: building the corpus: {' '.join(argv)} (once; cached in {cache})",
              flush=True)
        with open(os.path.join(build, "debootstrap.log"), "wb") as log:
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0 or not _debootstrap_done(root):
            raise BenchError(f"debootstrap failed; see {build}/debootstrap.log")
    tmp = tar_path + ".tmp"
    names = sorted(os.listdir(root))
    subprocess.run(["tar", "--numeric-owner", "--sort=name", "--xattrs",
                    "--xattrs-include=*", "-C", root, "-cf", tmp, "--", *names], check=True)
    os.replace(tmp, tar_path)
    shutil.rmtree(build, ignore_errors=True)
    return tar_path


def _debootstrap_done(root: str) -> bool:
    # debootstrap removes its own /debootstrap directory when it succeeds.
    return (os.path.exists(os.path.join(root, "etc", "debian_version"))
            and not os.path.exists(os.path.join(root, "debootstrap")))


@dataclass(frozen=True, slots=True)
class UpperStats:
    modified: int
    added: int
    deleted: int
    entries: int


def _content(name: str, size: int) -> bytes:
    block = hashlib.sha256(name.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def write_upper_tarball(base_tar: str, out: str, *, modified: int = 300, added: int = 200,
                        deleted: int = 100) -> UpperStats:
    """Write a layer tarball over ``base_tar``: ``modified`` files rewritten, ``added`` new
    files in existing directories, ``deleted`` files whited out, with the parent
    directories of all of them (as Docker's diff lists them). Deterministic."""
    with tarfile.open(base_tar, "r:") as tf:
        members = tf.getmembers()
    dirs = {m.name: m for m in members if m.isdir()}
    files = sorted((m for m in members if m.isreg() and m.size > 0), key=lambda m: m.name)
    rng = random.Random(SEED)
    chosen = rng.sample(files, modified + deleted)
    to_modify, to_delete = chosen[:modified], chosen[modified:]
    dir_names = sorted(dirs)
    sizes = [m.size for m in files]
    entries: dict[str, tuple[tarfile.TarInfo, bytes]] = {}

    def parents(name: str) -> Iterator[str]:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            yield "/".join(parts[:i])

    def add_parents(name: str) -> None:
        for p in parents(name):
            if p in dirs and p not in entries:
                d = dirs[p]
                info = tarfile.TarInfo(p)
                info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, d.mode, d.uid, d.gid
                info.mtime = UPPER_MTIME
                entries[p] = (info, b"")

    for m in to_modify:
        size = max(1, int(m.size * rng.uniform(0.8, 1.2)))
        info = tarfile.TarInfo(m.name)
        info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, UPPER_MTIME
        info.size = size
        entries[m.name] = (info, _content(m.name + "#modified", size))
        add_parents(m.name)
    for i in range(added):
        parent = rng.choice(dir_names)
        name = f"{parent}/bench-added-{i:03d}.dat"
        size = rng.choice(sizes)
        info = tarfile.TarInfo(name)
        info.mode, info.mtime, info.size = 0o644, UPPER_MTIME, size
        entries[name] = (info, _content(name, size))
        add_parents(name)
    for m in to_delete:
        head, _, tail = m.name.rpartition("/")
        name = f"{head}/{WH_PREFIX}{tail}" if head else f"{WH_PREFIX}{tail}"
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = 0o644, UPPER_MTIME
        entries[name] = (info, b"")
        add_parents(m.name)
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(entries):
            info, data = entries[name]
            tf.addfile(info, _Bytes(data) if data else None)
    os.replace(tmp, out)
    return UpperStats(modified, added, deleted, len(entries))


class _Bytes:
    """A minimal readable file over ``bytes`` (tarfile.addfile only calls ``read``)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk = bytes(self._data[self._pos:end])
        self._pos += len(chunk)
        return chunk


def write_big_tree(directory: str, total_bytes: int, *, big_files: int = 3,
                   small_size: int = 1 << 20) -> int:
    """Fill ``directory`` with ``total_bytes`` of incompressible-looking data: three quarters
    in ``big_files`` large files, the rest in files of ``small_size``. Returns the count."""
    os.makedirs(directory, exist_ok=True)
    block = random.Random(SEED).randbytes(1 << 20)
    big_share = total_bytes * 3 // 4
    per_big = big_share // big_files
    count = 0

    def fill(path: str, size: int) -> None:
        with open(path, "wb") as f:
            left = size
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n

    for i in range(big_files):
        fill(os.path.join(directory, f"big-{i}.bin"), per_big)
        count += 1
    small_dir = os.path.join(directory, "small")
    os.makedirs(small_dir, exist_ok=True)
    for i in range((total_bytes - per_big * big_files) // small_size):
        fill(os.path.join(small_dir, f"s{i:05d}.bin"), small_size)
        count += 1
    os.utime(directory, (time.time(), time.time()))
    return count
