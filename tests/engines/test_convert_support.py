"""Helpers for the Docker-store and conversion tests (no tests here).

- :func:`build_docker_store` writes a store as Docker's aufs driver leaves it in
  ``/var/lib/docker/aufs``: ``layers/ diff/ mnt/``, AUFS whiteouts (hard links to the
  branch's ``.wh..wh.aufs``), opaque dirs, and the housekeeping of branches AUFS mounted
  read-write (``.wh..wh.aufs``, ``.wh..wh.orph/``, ``.wh..wh.plnk/`` with a pseudo-link);
  no ``.aufs/``.
- :func:`snapshot` records every byte and all metadata (but atimes) of a tree.
- :func:`store_listing` / :func:`driver_listing`: per layer, its ``changes``, its ``diff``
  as a normalized listing and its ``diff_size`` — what a conversion must not change.
- :func:`convert_killed` converts a store in a forked child that SIGKILLs itself just
  before its N-th file-system mutation; ``python -m tests.engines.test_convert_support
  ROOT TO KILL_AT`` does the same in a fresh interpreter (prints ``MUTATIONS <n>``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aufs
from aufs.archive.changes import diff_size, layer_changes
from aufs.archive.export import export_layer
from aufs.store import layers

T0 = 1_450_000_000  # 2015-12-13: the layers' own times
NS = 1_000_000_000


def layer_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


BASE, IMAGE, CTR = (layer_id(n) for n in ("base", "image", "ctr"))
INIT = f"{CTR}-init"
CHAIN = {BASE: [], IMAGE: [BASE], INIT: [IMAGE, BASE], CTR: [INIT, IMAGE, BASE]}
HOUSEKEEPING = (".wh..wh.aufs", ".wh..wh.orph", ".wh..wh.plnk")


@dataclass(frozen=True)
class Store:
    root: Path
    chains: dict[str, list[str]]


def _file(path: Path, data: bytes | str = b"", mode: int = 0o644, mtime: int = T0,
          uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def _branch_housekeeping(diff: Path, pseudo_link: bool = False) -> None:
    """What AUFS leaves in a branch it mounted read-write; whiteouts link to the base."""
    _file(diff / ".wh..wh.aufs", mode=0o444)
    (diff / ".wh..wh.orph").mkdir(mode=0o700)
    (diff / ".wh..wh.plnk").mkdir(mode=0o700)
    if pseudo_link:
        _file(diff / ".wh..wh.plnk" / "393218.17", "copied-up, not yet linked", mode=0o755)
    _file(diff / ".wh..wh.orph" / ".wh.orph-1", "deleted while open")


def _whiteout(diff: Path, rel: str) -> None:
    """An AUFS whiteout: a hard link to the branch's ``.wh..wh.aufs`` if it has one."""
    parent, _, name = rel.rpartition("/")
    wh = diff / parent / f".wh.{name}"
    base = diff / ".wh..wh.aufs"
    if base.exists():
        os.link(base, wh)
    else:
        _file(wh, mode=0o444)


def _dir_times(top: Path, mtime: int = T0) -> None:
    for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        os.utime(dirpath, (mtime, mtime))


def build_docker_store(root: Path) -> Store:
    """A Docker aufs store: image base -> image -> <ctr>-init -> ctr."""
    diff = {i: root / "diff" / i for i in CHAIN}
    for top in ("layers", "diff", "mnt"):
        (root / top).mkdir(parents=True, exist_ok=True)
    for i, chain in CHAIN.items():
        diff[i].mkdir()
        (root / "mnt" / i).mkdir()
        (root / "layers" / i).write_text("".join(f"{p}\n" for p in chain))

    b = diff[BASE]
    for d in ("bin", "etc", "usr/share/doc/pkg", "usr/lib", "var/cache/apt", "root"):
        (b / d).mkdir(parents=True)
    _file(b / "bin" / "sh", b"\x7fELF" + bytes(5000), mode=0o755)
    os.link(b / "bin" / "sh", b / "bin" / "dash")  # hard link
    os.symlink("sh", b / "bin" / "rsh")
    os.symlink("/usr/lib/libc.so.6", b / "bin" / "libc")  # absolute target: content
    _file(b / "bin" / "su", b"su", mode=0o4755)
    _file(b / "etc" / "passwd", "root:x:0:0::/root:/bin/sh\n")
    _file(b / "etc" / "shadow", "root:*:1::::::\n", mode=0o640, gid=42)
    _file(b / "etc" / "motd", "hello\n")
    _file(b / "usr" / "share" / "doc" / "pkg" / "README", "docs\n", uid=1000, gid=1000)
    _file(b / "usr" / "share" / "doc" / "pkg" / "NEWS", "news\n")
    _file(b / "usr" / "lib" / "libc.so.6", bytes(range(256)) * 40)
    _file(b / "var" / "cache" / "apt" / "pkgcache.bin", bytes(3000))
    os.mkfifo(b / "var" / "fifo")
    os.mknod(b / "var" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(b / "bin" / "su", "user.origin", b"base")
    os.chmod(b / "root", 0o700)
    _dir_times(b)

    # A layer of a "docker build": committed from a branch AUFS had mounted rw.
    m = diff[IMAGE]
    _branch_housekeeping(m)
    (m / "etc").mkdir()
    _file(m / "etc" / "motd", "hello from the image\n")
    _whiteout(m, "etc/shadow")
    (m / "usr" / "share" / "doc").mkdir(parents=True)
    _file(m / "usr" / "share" / "doc" / ".wh..wh..opq", mode=0o444)  # rm -rf; mkdir
    _file(m / "usr" / "share" / "doc" / "only-this", "opaque\n")
    _whiteout(m, "var")
    (m / "opt" / "app").mkdir(parents=True)
    _file(m / "opt" / "app" / "run", "#!/bin/sh\n", mode=0o755)
    _dir_times(m)  # usr/ and usr/share/ as in the base: no change of their own

    n = diff[INIT]
    _branch_housekeeping(n)
    for name in (".dockerinit", ".dockerenv"):
        _file(n / name, mode=0o755)
    (n / "etc").mkdir()
    for name in ("hosts", "hostname", "resolv.conf"):
        _file(n / "etc" / name)
    (n / "dev" / "shm").mkdir(parents=True)
    _file(n / "dev" / "console", mode=0o755)
    _dir_times(n)

    c = diff[CTR]
    _branch_housekeeping(c, pseudo_link=True)
    (c / "etc").mkdir()
    _whiteout(c, "etc/motd")
    _file(c / "etc" / "passwd", "root:x:0:0::/root:/bin/bash\n")
    _whiteout(c, "bin")  # a whole directory of the base
    (c / "opt" / "app").mkdir(parents=True)
    _whiteout(c, "opt/app/run")
    _file(c / "opt" / "app" / "log", "started\n", mode=0o600)
    os.link(c / "opt" / "app" / "log", c / "opt" / "app" / "log.1")
    (c / "tmp" / "empty").mkdir(parents=True)
    os.symlink("../opt/app/log", c / "tmp" / "link")
    _dir_times(c)
    os.utime(c / "opt", (T0 - 20, T0 - 20))
    return Store(root=root, chains=dict(CHAIN))


BUSY = layer_id("busy")


def add_busy_layer(root: Path) -> None:
    """A layer on top of the container with many markers (crash tests want many steps):
    40 whiteouts in 8 directories, opaque directories, housekeeping at the root and one
    nested below a directory."""
    d = root / "diff" / BUSY
    d.mkdir()
    (root / "mnt" / BUSY).mkdir()
    (root / "layers" / BUSY).write_text("".join(f"{p}\n" for p in [CTR, *CHAIN[CTR]]))
    _branch_housekeeping(d, pseudo_link=True)
    for i in range(8):
        (d / f"dir{i}").mkdir()
        _file(d / f"dir{i}" / "kept", f"kept {i}\n")
        for j in range(5):
            _whiteout(d, f"dir{i}/gone{j}")
    for opaque in ("usr/lib", "etc", "dir3"):
        (d / opaque).mkdir(parents=True, exist_ok=True)
        _file(d / opaque / ".wh..wh..opq", mode=0o444)
    _file(d / "usr" / "lib" / "only.so", b"\0" * 64)
    (d / "dir0" / ".wh..wh.orph").mkdir()  # housekeeping where AUFS would not put it
    _file(d / "dir0" / ".wh..wh.orph" / "x", "orphan")
    _dir_times(d, T0 + 100)


# -- comparing trees ---------------------------------------------------------------------


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _content(path: str, st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    if stat.S_ISLNK(st.st_mode):
        return "-> " + os.readlink(path)
    return ""


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top``: all metadata but the atime, and the content."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            if name == "" and dirpath != str(top):
                continue  # listed by its parent
            st = os.lstat(path)
            out[os.path.relpath(path, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                st.st_nlink, st.st_ino, st.st_rdev, _xattrs(path), _content(path, st))
    return out


def union_tree(top: str) -> dict[str, tuple[Any, ...]]:
    """What a mounted union shows: type and mode, owner, size, content, xattrs."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            xattrs = tuple(x for x in _xattrs(path) if not x[0].startswith("security.selinux"))
            mtime = 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid,
                                               0 if stat.S_ISDIR(st.st_mode) else st.st_size,
                                               mtime, st.st_rdev, xattrs, _content(path, st))
    return out


def tar_listing(stream: Any) -> list[tuple[Any, ...]]:
    """A layer tar as comparable rows; a whiteout or opaque marker is its name alone."""
    rows: list[tuple[Any, ...]] = []
    with stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            if os.path.basename(m.name).startswith(".wh."):
                rows.append(("whiteout", m.name))
                continue
            data = tar.extractfile(m) if m.isfile() else None
            digest = hashlib.sha256(data.read()).hexdigest() if data is not None else ""
            xattrs = tuple(sorted((k, v) for k, v in m.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.")))
            rows.append((m.name, m.type, m.mode, m.uid, m.gid, m.size, m.mtime, m.linkname,
                         m.devmajor, m.devminor, xattrs, digest))
    return rows


Listing = dict[str, tuple[list[str], list[tuple[Any, ...]], int]]


def store_listing(root: Path) -> Listing:
    """Per layer of the store at ``root``: (changes, diff listing, diff size), computed
    from the directories as the driver does for a layer's direct parent."""
    out: Listing = {}
    for i in layers.list_ids(str(root / "layers")):
        chain = layers.read_chain(str(root / "layers" / i))
        rw = os.path.realpath(root / "diff" / i)
        lowers = [os.path.realpath(root / "diff" / p) for p in chain]
        out[i] = ([str(c) for c in layer_changes(lowers, rw)],
                  tar_listing(export_layer(rw)), diff_size(rw))
    return out


def driver_listing(d: aufs.Driver) -> Listing:
    out: Listing = {}
    for i in d.ids():
        out[i] = ([str(c) for c in d.changes(i)], tar_listing(d.diff(i)), d.diff_size(i))
    return out


def housekeeping_of(top: Path) -> dict[str, str]:
    """Every AUFS housekeeping entry below ``top`` (and what is inside): path -> content."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if ".wh..wh." in rel and ".wh..wh..opq" not in rel:
                out[rel] = _content(path, os.lstat(path)) or "dir"
    return out


# -- the crash child -------------------------------------------------------------------

_MUTATORS = ("rename", "replace", "unlink", "rmdir", "mkdir", "mknod", "setxattr",
             "removexattr", "utime", "chown", "chmod", "symlink", "link", "fsync", "write",
             "truncate", "ftruncate")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


def _arm(kill_at: int) -> Callable[[], int]:
    """Count every mutating call of ``os``; SIGKILL this process before number kill_at."""
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def mutator(*args: Any, **kwargs: Any) -> Any:
            tick()
            return fn(*args, **kwargs)
        return mutator

    for name in _MUTATORS:
        setattr(os, name, wrap(getattr(os, name)))
    real_open = os.open

    def opener(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & _WRITE_FLAGS:
            tick()
        return real_open(path, flags, *args, **kwargs)

    os.open = opener
    return lambda: count


def convert_killed(root: Path, to: str, kill_at: int) -> tuple[int, int]:
    """Convert the store in a forked child that SIGKILLs itself before its kill_at-th
    mutation (0: never). Returns (the signal that ended it or 0, mutations counted)."""
    from aufs.convert import convert

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        code = 70
        try:
            os.close(r)
            counted = _arm(kill_at)
            convert(root, to)
            os.write(w, str(counted()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status), 0
    if os.WEXITSTATUS(status) != 0:
        raise RuntimeError(f"the conversion child failed (exit {os.WEXITSTATUS(status)})")
    return 0, int(out)


def _child(argv: list[str]) -> int:
    root, to, kill_at = argv[0], argv[1], int(argv[2])
    from aufs.convert import convert

    counted = _arm(kill_at)
    convert(root, to)
    print(f"MUTATIONS {counted()}")
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
