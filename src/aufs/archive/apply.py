"""Tar stream -> layer, atomically and without ever leaving the layer (Docker's UnpackLayer).

:func:`apply_layer` extracts into a staging directory next to the store's layers — first
a hard-link clone of ``diff/<id>`` (directories recreated, everything else linked; the
extractor never writes into an existing inode, it unlinks and creates) — and then, under
the store lock, swaps it with ``diff/<id>`` in one ``renameat2(RENAME_EXCHANGE)``. Any
error, a kill included, leaves ``diff/<id>`` as it was (a dead process's staging
directory is removed by the store's recovery).

Every entry is created with ``*at`` calls relative to its parent directory, which is
reached from the root fd one component at a time with ``O_NOFOLLOW | O_DIRECTORY``: a
symlink on the way — already in the layer or made a moment before by the same archive —
raises :class:`BreakoutError`; so does a name that leaves the layer once cleaned, and a
hard link to something outside the layer or missing. Symlink *targets* are content and
may be anything.

Whiteouts arrive as Docker/OCI ``.wh.`` entries; they remove what they delete within
this layer and are written in the store's own format (:mod:`aufs.whiteout`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import IO, TYPE_CHECKING

from aufs._sys import safefs
from aufs._sys.files import rmtree
from aufs.archive import ArchiveError, BreakoutError
from aufs.archive.compression import open_decompressed
from aufs.graphdriver import LayerInUseError
from aufs.whiteout import (
    OVERLAY_XATTR_PREFIX,
    WH_META_PREFIX,
    WH_PLINK,
    WH_PREFIX,
    Kind,
    WhiteoutFormat,
    classify_name,
)

if TYPE_CHECKING:
    from aufs.driver import Driver

__all__ = ["LayerMountedError", "apply_layer", "extract", "extract_into_dir"]

_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_BUF = 1 << 20
_TAR_BUF = 1 << 16
_XATTR_PAX = "SCHILY.xattr."
_DIR_CACHE = 64
_XATTR_REFUSED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)
# Errors that come from the machine, not from the archive: raised as they are.
_ENVIRONMENT_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS,
                                 errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EBUSY,
                                 errno.EINTR))
# Where AUFS pseudo-link targets (".wh..wh.plnk/<ino>") wait during one extraction:
# a housekeeping name, so nothing ever exports or lists it.
_PLNK_TMP = f"{WH_META_PREFIX}apply-plnk"


class LayerMountedError(LayerInUseError):
    """apply_diff into a layer whose union is mounted (it would change under its users)."""


# -- the driver entry point ---------------------------------------------------------------

def apply_layer(driver: Driver, id: str, stream: IO[bytes]) -> None:
    """Extract the layer tar ``stream`` into ``diff/<id>``: all of it, or nothing."""
    layout = driver.layout
    _refuse_mounted(driver, id)
    diff = layout.diff(id)
    staging = layout.staging(f"apply-{id}-{threading.get_ident()}-{os.getpid()}")
    os.makedirs(layout.staging_dir, exist_ok=True)
    rmtree(staging)  # our own leftover (same pid and thread): never a live apply
    swapped = False
    try:
        os.mkdir(staging, 0o700)
        seed_ino = os.lstat(diff).st_ino
        seeded = clone_tree(diff, staging)
        root_fd = os.open(staging, _O_ROOT)
        try:
            extract(root_fd, stream, driver.whiteouts, seeded=seeded)
        finally:
            os.close(root_fd)
        with driver.locked():
            _refuse_mounted(driver, id)
            if os.lstat(diff).st_ino != seed_ino:
                raise LayerInUseError(f"layer {id} was changed by another apply meanwhile")
            safefs.exchange(staging, diff)
            swapped = True
    except BaseException:
        if not swapped:
            with contextlib.suppress(OSError):
                rmtree(staging)
            raise
    with contextlib.suppress(OSError):  # the old tree; recovery removes it after a crash
        rmtree(staging)


def _refuse_mounted(driver: Driver, id: str) -> None:
    if driver.mounted(id):
        raise LayerMountedError(f"layer {id} is mounted: apply_diff needs it unmounted")


def extract_into_dir(directory: str, stream: IO[bytes],
                     whiteouts: WhiteoutFormat | None = None) -> None:
    """Extract a layer tar straight into ``directory`` (not atomic).

    For :class:`aufs.naive.NaiveDiffDriver`, whose ``directory`` is a mounted layer:
    a ``.wh.`` entry removes what it names and an opaque marker empties the directory,
    and the union records those deletions itself (Docker's UnpackLayer on a mount).
    Pass ``whiteouts`` to also write whiteouts of that format.
    """
    root_fd = os.open(directory, _O_ROOT | os.O_NOFOLLOW)
    try:
        extract(root_fd, stream, whiteouts)
    finally:
        os.close(root_fd)


# -- the seed: a hard-link clone ----------------------------------------------------------

def clone_tree(src: str, dst: str) -> bool:
    """Make the empty directory ``dst`` a clone of ``src``: directories recreated with their
    owner, mode, xattrs and times; every other entry hard-linked. True if ``src`` had
    entries."""
    sfd = os.open(src, _O_ROOT | os.O_NOFOLLOW)
    try:
        dfd = os.open(dst, _O_ROOT | os.O_NOFOLLOW)
        try:
            any_entry = _clone_dir(sfd, dfd)
            _copy_dir_meta(sfd, dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return any_entry


def _clone_dir(sfd: int, dfd: int) -> bool:
    with os.scandir(sfd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if not is_dir:
            os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            continue
        os.mkdir(name, 0o700, dir_fd=dfd)
        sub_s = os.open(name, safefs.O_DIR, dir_fd=sfd)
        try:
            sub_d = os.open(name, safefs.O_DIR, dir_fd=dfd)
            try:
                _clone_dir(sub_s, sub_d)
                _copy_dir_meta(sub_s, sub_d)
            finally:
                os.close(sub_d)
        finally:
            os.close(sub_s)
    return bool(entries)


def _copy_dir_meta(sfd: int, dfd: int) -> None:
    st = os.fstat(sfd)
    os.fchown(dfd, st.st_uid, st.st_gid)
    for name in _listxattr(sfd):
        with contextlib.suppress(FileNotFoundError, OSError):
            os.setxattr(dfd, name, os.getxattr(sfd, name))
    os.fchmod(dfd, stat.S_IMODE(st.st_mode))
    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _listxattr(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


# -- extraction ---------------------------------------------------------------------------

def extract(root_fd: int, stream: IO[bytes], whiteouts: WhiteoutFormat | None, *,
            seeded: bool = True) -> None:
    """Extract the (possibly compressed) layer tar ``stream`` below the directory
    ``root_fd``. ``whiteouts``: the format to write deletions in (None: only remove).
    ``seeded``: the directory may hold whiteouts already (False: it was empty)."""
    _, reader = open_decompressed(stream)
    ex = _Extractor(root_fd, whiteouts)
    ex.stale_whiteouts = seeded and whiteouts is not None and (
        whiteouts.whiteout_path_name("x") != "x")
    try:
        tf = _StrictTar.open(fileobj=reader, mode="r|", bufsize=_TAR_BUF)
        try:
            while True:
                member = tf.next()
                if member is None:
                    break
                try:
                    ex.entry(tf, member)
                except OSError as exc:
                    if exc.errno in _ENVIRONMENT_ERRNOS:
                        raise
                    raise ArchiveError(f"tar entry {member.name!r}: {exc}") from exc
        finally:
            tf.close()
        ex.finish()
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        raise ArchiveError(f"malformed tar stream: {exc}") from exc
    finally:
        ex.close()


# Private to tarfile (absent from its stubs): an all-zero block, and no block at all.
_EOF_HEADER: type[Exception] = tarfile.__dict__["EOFHeaderError"]
_EMPTY_HEADER: type[Exception] = tarfile.__dict__["EmptyHeaderError"]


class _StrictTar(tarfile.TarFile):
    """``tarfile`` stream reading that tells a truncated or corrupt archive from its end
    (``tarfile`` stops silently at a bad or partial header), keeping no member list."""

    def next(self) -> tarfile.TarInfo | None:
        first: tarfile.TarInfo | None = self.firstmember  # type: ignore[has-type]
        if first is not None:
            self.firstmember = None
            return first
        assert self.fileobj is not None
        if self.offset != self.fileobj.tell():
            if self.offset == 0:
                return None
            self.fileobj.seek(self.offset - 1)
            if not self.fileobj.read(1):
                raise ArchiveError("truncated tar stream (unexpected end of data)")
        try:
            member: tarfile.TarInfo = self.tarinfo.fromtarfile(self)
            return member
        except _EOF_HEADER:
            self._loaded = True
            return None
        except _EMPTY_HEADER:
            self._loaded = True
            if self.offset == 0:
                return None  # an empty stream is an empty layer
            raise ArchiveError("truncated tar stream (no end-of-archive marker)") from None
        except tarfile.HeaderError as exc:
            raise ArchiveError(f"malformed tar header at byte {self.offset}: {exc}") from None


def clean_name(name: str) -> str:
    """Docker's cleaning of a member name: relative, normalized; "." is the root.
    A name that leaves the layer raises BreakoutError."""
    cleaned = posixpath.normpath(name.lstrip("/")) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise BreakoutError(f"tar entry {name!r} would be written outside the layer")
    return cleaned


def _split(name: str) -> tuple[str, str]:
    head, _, tail = name.rpartition("/")
    return head, tail


def _ns(member: tarfile.TarInfo, key: str) -> int | None:
    text = member.pax_headers.get(key)
    if text is None:
        return None
    try:
        return int(Decimal(text) * 1_000_000_000)
    except InvalidOperation:
        raise ArchiveError(f"bad PAX {key} {text!r} for {member.name!r}") from None


def _times(member: tarfile.TarInfo) -> tuple[int, int]:
    mtime = _ns(member, "mtime")
    if mtime is None:
        mtime = int(member.mtime) * 1_000_000_000
    atime = _ns(member, "atime")
    return (mtime if atime is None else atime), mtime


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PAX):
            name = key[len(_XATTR_PAX):]
            if not name.startswith(OVERLAY_XATTR_PREFIX):
                out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def _set_xattrs(target: int | str, xattrs: list[tuple[str, bytes]]) -> None:
    """Set xattrs on an fd or a path (not followed). As Docker does, an attribute the
    filesystem or the kernel refuses (ENOTSUP, EPERM) is skipped."""
    for key, value in xattrs:
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _XATTR_REFUSED:
                raise


class _Extractor:
    def __init__(self, root_fd: int, whiteouts: WhiteoutFormat | None) -> None:
        self.root_fd = root_fd
        self.whiteouts = whiteouts
        self.dirs: dict[str, int] = {}          # open parent directories by cleaned path
        self.unpacked: set[str] = set()         # names this archive created (opaque keeps them)
        self.dir_times: list[tuple[str, tuple[int, int]]] = []
        self.plnk: dict[str, str] = {}          # pseudo-link basename -> its name in _PLNK_TMP
        self.plnk_fd = -1
        self.buf = bytearray(_BUF)
        # A whiteout format whose marker has its own name (AUFS ``.wh.<name>``): a new
        # entry must drop the marker of its name, or the layer would both have and hide it.
        self.stale_whiteouts = False

    # -- directories -----------------------------------------------------------------

    def dir_fd(self, path: str, *, create: bool) -> int:
        """fd of the directory ``path`` (cleaned, "" or "." = root), never through a symlink."""
        if path in ("", "."):
            return self.root_fd
        fd = self.dirs.get(path)
        if fd is not None:
            return fd
        head, tail = _split(path)
        parent = self.dir_fd(head, create=create)
        try:
            fd = safefs.open_dir_at(parent, tail, create=0o755 if create else None)
        except safefs.SymlinkInPathError:
            raise BreakoutError(f"{path!r} is a symlink: extraction never follows one") from None
        except safefs.NotADirectoryInPathError:
            raise ArchiveError(f"{path!r} is not a directory") from None
        self.dirs[path] = fd
        return fd

    def _drop_cached(self, path: str) -> None:
        fd = self.dirs.pop(path, None)
        if fd is not None:
            os.close(fd)
        if self.dirs:
            prefix = path + "/"
            for key in [k for k in self.dirs if k.startswith(prefix)]:
                os.close(self.dirs.pop(key))

    def remove(self, parent_fd: int, path: str, base: str) -> None:
        self._drop_cached(path)
        safefs.remove_at(parent_fd, base)

    def close_dirs(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()
        if self.plnk_fd >= 0:
            os.close(self.plnk_fd)
            self.plnk_fd = -1
            with contextlib.suppress(OSError):
                safefs.remove_at(self.root_fd, _PLNK_TMP)

    # -- one member ------------------------------------------------------------------

    def entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if len(self.dirs) >= _DIR_CACHE:  # only here: no fd of the cache is in use
            self.close_dirs()
        name = clean_name(member.name)
        if name == ".":
            self._root(member)
            return
        head, base = _split(name)
        if name.startswith(WH_META_PREFIX):
            first = name.split("/", 1)[0]
            if first == WH_PLINK and head and member.isreg():
                self._keep_plnk(tf, member, base)
                return
            if classify_name(first).kind is Kind.HOUSEKEEPING:
                return
        if WH_PREFIX in head and any(
                classify_name(c).kind is not Kind.PLAIN for c in head.split("/")):
            return  # inside a whiteout or AUFS housekeeping: never content
        kind = classify_name(base)
        if kind.kind is Kind.HOUSEKEEPING:
            return
        parent = self.dir_fd(head, create=True)
        if kind.kind is Kind.OPAQUE:
            self._opaque(head, parent)
        elif kind.kind is Kind.WHITEOUT:
            self._whiteout(head, parent, kind.target, member.mode)
        else:
            self._create(tf, member, name, parent, base)
            self.unpacked.add(name)
            if self.stale_whiteouts:
                assert self.whiteouts is not None
                with contextlib.suppress(FileNotFoundError):
                    safefs.remove_at(parent, self.whiteouts.whiteout_path_name(base))

    def _root(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise ArchiveError(f"tar entry {member.name!r} names the layer root: not a directory")
        fd = self.root_fd
        os.fchown(fd, member.uid, member.gid)
        _set_xattrs(fd, _xattrs(member))
        os.fchmod(fd, member.mode & 0o7777)
        self.dir_times.append((".", _times(member)))

    def _whiteout(self, head: str, parent: int, target: str, mode: int) -> None:
        self.remove(parent, posixpath.join(head, target), target)
        if self.whiteouts is not None:
            self.whiteouts.make_whiteout(parent, target, mode & 0o777 or 0o600)
            self.stale_whiteouts = self.whiteouts.whiteout_path_name("x") != "x"
            self.unpacked.add(posixpath.join(head, self.whiteouts.whiteout_path_name(target)))

    def _opaque(self, head: str, dir_fd: int) -> None:
        self._prune(head, dir_fd)
        if self.whiteouts is not None:
            self.whiteouts.make_opaque(dir_fd)

    def _prune(self, path: str, dir_fd: int) -> None:
        """Remove what is in the directory and was not written by this archive."""
        with os.scandir(dir_fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in entries:
            sub = posixpath.join(path, name) if path else name
            if sub == _PLNK_TMP:
                continue
            if sub not in self.unpacked:
                self.remove(dir_fd, sub, name)
            elif is_dir:  # not cached: a deep prune must not pile up open fds
                fd = safefs.open_dir_at(dir_fd, name)
                try:
                    self._prune(sub, fd)
                finally:
                    os.close(fd)

    def _keep_plnk(self, tf: tarfile.TarFile, member: tarfile.TarInfo, base: str) -> None:
        if self.plnk_fd < 0:
            self.plnk_fd = safefs.open_dir_at(self.root_fd, _PLNK_TMP, create=0o700)
        tmp = f"{len(self.plnk)}"
        self._regular(tf, member, self.plnk_fd, tmp)
        self.plnk[base] = tmp

    # -- creating entries -------------------------------------------------------------

    def _create(self, tf: tarfile.TarFile, member: tarfile.TarInfo, name: str, parent: int,
                base: str) -> None:
        if member.isreg():
            self._regular(tf, member, parent, base, name)
        elif member.isdir():
            self._dir(member, name, parent, base)
        elif member.islnk():
            self._hardlink(member, name, parent, base)
        elif member.issym():
            self._new(parent, name, base, lambda: os.symlink(member.linkname, base, dir_fd=parent))
            self._meta(member, parent, base, symlink=True)
        elif member.isfifo() or member.ischr() or member.isblk():
            fmt = stat.S_IFIFO if member.isfifo() else (
                stat.S_IFCHR if member.ischr() else stat.S_IFBLK)
            dev = os.makedev(member.devmajor, member.devminor) if fmt != stat.S_IFIFO else 0
            self._new(parent, name, base,
                      lambda: os.mknod(base, fmt | 0o600, dev, dir_fd=parent))
            self._meta(member, parent, base, symlink=False)
        else:
            raise ArchiveError(f"tar entry {member.name!r}: unsupported type {member.type!r}")

    def _new(self, parent: int, name: str, base: str, make: Callable[[], object]) -> None:
        """Run ``make`` (creates ``base``), replacing whatever is there first."""
        try:
            make()
        except FileExistsError:
            self.remove(parent, name, base)
            make()

    def _regular(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parent: int, base: str,
                 name: str = "") -> None:
        try:
            fd = os.open(base, _O_NEW, 0o600, dir_fd=parent)
        except FileExistsError:
            self.remove(parent, name, base)
            fd = os.open(base, _O_NEW, 0o600, dir_fd=parent)
        try:
            if member.size:
                self._copy(tf, member, fd)
            os.fchown(fd, member.uid, member.gid)
            _set_xattrs(fd, _xattrs(member))
            os.fchmod(fd, member.mode & 0o7777)
            os.utime(fd, ns=_times(member))
        finally:
            os.close(fd)

    def _copy(self, tf: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        if not member.issparse():  # straight from the stream: no per-member file object
            assert tf.fileobj is not None
            read = tf.fileobj.read
            remaining = member.size
            while remaining > 0:
                data = read(min(remaining, _BUF))
                if not data:
                    raise ArchiveError(f"truncated tar stream in {member.name!r}")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                remaining -= len(data)
            return
        src = tf.extractfile(member)
        assert src is not None
        view = memoryview(self.buf)
        remaining = member.size
        while remaining > 0:
            n = src.readinto(view[: min(remaining, _BUF)])  # type: ignore[attr-defined]
            if not n:
                raise ArchiveError(f"truncated tar stream in {member.name!r}")
            chunk = view[:n]
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
            remaining -= n

    def _dir(self, member: tarfile.TarInfo, name: str, parent: int, base: str) -> None:
        try:
            os.mkdir(base, 0o700, dir_fd=parent)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(base, dir_fd=parent).st_mode):
                self.remove(parent, name, base)
                os.mkdir(base, 0o700, dir_fd=parent)
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        xattrs = _xattrs(member)
        if xattrs:
            _set_xattrs(self.dir_fd(name, create=False), xattrs)
        os.chmod(base, member.mode & 0o7777, dir_fd=parent)
        self.dir_times.append((name, _times(member)))

    def _meta(self, member: tarfile.TarInfo, parent: int, base: str, *, symlink: bool) -> None:
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        xattrs = _xattrs(member)
        if xattrs:
            _set_xattrs(safefs.proc_path(parent, base), xattrs)
        if not symlink:  # just made by us, in a directory only we write: not a symlink
            os.chmod(base, member.mode & 0o7777, dir_fd=parent)
        os.utime(base, ns=_times(member), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, member: tarfile.TarInfo, name: str, parent: int, base: str) -> None:
        target = clean_name(member.linkname)
        if target.split("/", 1)[0] == WH_PLINK:
            tmp = self.plnk.get(posixpath.basename(target))
            if tmp is None:
                raise ArchiveError(f"hard link {member.name!r} to unknown AUFS pseudo-link "
                                   f"{member.linkname!r}")
            src_fd, src_base = self.plnk_fd, tmp
        else:
            if target == ".":
                raise BreakoutError(f"hard link {member.name!r} to the layer root")
            if target == name or target.startswith(name + "/"):
                raise ArchiveError(f"hard link {member.name!r} to itself or below it")
            head, src_base = _split(target)
            try:
                src_fd = self.dir_fd(head, create=False)
            except FileNotFoundError:
                raise BreakoutError(f"hard link {member.name!r} to missing "
                                    f"{member.linkname!r}") from None
            except ArchiveError as exc:
                raise BreakoutError(f"hard link {member.name!r}: {exc}") from None
        try:
            self._new(parent, name, base, lambda: os.link(
                src_base, base, src_dir_fd=src_fd, dst_dir_fd=parent, follow_symlinks=False))
        except FileNotFoundError:
            raise BreakoutError(f"hard link {member.name!r} to missing "
                                f"{member.linkname!r}") from None
        except PermissionError:
            raise BreakoutError(f"hard link {member.name!r} to {member.linkname!r}, "
                                "which is not a file") from None

    # -- the end -----------------------------------------------------------------------

    def finish(self) -> None:
        """Directory times last: creating their contents changed them."""
        for name, times in self.dir_times:
            if len(self.dirs) >= _DIR_CACHE:
                self.close_dirs()
            try:
                fd = self.dir_fd(name, create=False)
            except (FileNotFoundError, ArchiveError):
                continue  # replaced or removed later in the archive
            os.utime(fd, ns=times)
