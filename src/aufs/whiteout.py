"""Whiteouts: the only module that knows how a deletion or an opaque directory is written.

Two on-disk formats exist, and every reader understands both (a fuse-overlayfs layer
that is still mounted holds overlay-style whiteouts inside an AUFS store):

========  =====================================  ====================================
format    deleted ``name``                       opaque directory
========  =====================================  ====================================
aufs      empty file ``.wh.name``                file ``.wh..wh..opq`` inside it
overlay   char device 0:0 named ``name``         xattr ``trusted.overlay.opaque=y``
========  =====================================  ====================================

AUFS housekeeping (``.wh..wh.plnk``, ``.wh..wh.aufs``, ``.wh..wh.orph``, anything under
``.wh..wh.``) is never content. A store picks one :class:`WhiteoutFormat` and passes it
to tar export, tar apply and change detection; none of them spells ``.wh.`` itself.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import ClassVar, NamedTuple

from aufs._sys import deep, safefs
from aufs._sys.files import NO_XATTRS, list_xattrs

WH_PREFIX = ".wh."
WH_META_PREFIX = ".wh..wh."
WH_OPAQUE = ".wh..wh..opq"
WH_PLINK = ".wh..wh.plnk"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."
# The private attributes of the union engines (overlayfs, also in userxattr mode, and
# fuse-overlayfs): whiteouts, opaque flags, redirects. Never content: a layer tar that
# carries them would hide or redirect its parents' files behind changes' back.
UNION_XATTR_PREFIXES = (OVERLAY_XATTR_PREFIX, "user.overlay.", "user.fuseoverlayfs.")

# normalize()'s hook for AUFS housekeeping: (directory fd, name, path below the root).
SetAside = Callable[[int, str, str], None]


class Kind(enum.Enum):
    PLAIN = "plain"               # ordinary content
    WHITEOUT = "whiteout"         # hides ``Entry.target`` of the lower layers
    OPAQUE = "opaque"             # marker: the directory holding it is opaque (aufs)
    HOUSEKEEPING = "housekeeping"  # never content, never exported


class Entry(NamedTuple):
    kind: Kind
    target: str = ""  # for WHITEOUT: the name it deletes


_PLAIN = Entry(Kind.PLAIN)
_OPAQUE = Entry(Kind.OPAQUE)
_HOUSEKEEPING = Entry(Kind.HOUSEKEEPING)


def classify_name(name: str) -> Entry:
    """Classify by name alone (the AUFS / tar format). Pure."""
    if not name.startswith(WH_PREFIX):
        return _PLAIN
    if name == WH_OPAQUE:
        return _OPAQUE
    if name.startswith(WH_META_PREFIX):
        return _HOUSEKEEPING
    # ".wh.", ".wh.." and ".wh..." come out as whiteouts of "", "." and "..": a caller
    # that acts on the target must refuse those (tar apply raises BreakoutError).
    return Entry(Kind.WHITEOUT, name[len(WH_PREFIX):])


def is_overlay_whiteout_mode(mode: int, rdev: int) -> bool:
    return stat.S_ISCHR(mode) and rdev == 0


def classify(name: str, mode: int, rdev: int) -> Entry:
    """Classify a directory entry in either format, given its lstat mode and rdev."""
    entry = classify_name(name)
    if is_overlay_whiteout_mode(mode, rdev):
        # A 0:0 device named like an AUFS entry is fuse-overlayfs bookkeeping.
        return Entry(Kind.WHITEOUT, name) if entry is _PLAIN else _HOUSEKEEPING
    return entry


def classify_entry(entry: os.DirEntry[str]) -> Entry:
    """Classify a scandir entry; stats only character devices."""
    name = entry.name
    if name.startswith(WH_PREFIX):
        if entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False):
            return classify_name(name)
    elif not _maybe_device(entry):
        return _PLAIN
    st = entry.stat(follow_symlinks=False)
    return classify(name, st.st_mode, st.st_rdev)


def wh_file_target(entry: os.DirEntry[str]) -> str | None:
    """For a scandir entry named ``.wh.*``: the name it whites out, as
    ``classify_entry(entry).target`` says for a ``WHITEOUT``; None for the opaque marker,
    AUFS housekeeping and a 0:0 device of such a name (fuse-overlayfs bookkeeping). The
    same answer without an :class:`Entry` made: change detection calls it once a
    whiteout of an AUFS layer."""
    name = entry.name
    if name.startswith(WH_META_PREFIX):
        return None  # the opaque marker or housekeeping
    if not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
        st = entry.stat(follow_symlinks=False)
        if is_overlay_whiteout_mode(st.st_mode, st.st_rdev):
            return None
    return name[len(WH_PREFIX):]


def _maybe_device(entry: os.DirEntry[str]) -> bool:
    return not (
        entry.is_file(follow_symlinks=False)
        or entry.is_dir(follow_symlinks=False)
        or entry.is_symlink()
    )


def has_opaque_xattr(dir_fd_or_path: int | str) -> bool:
    # listxattr first: it answers "none" (most directories) without raising, which
    # getxattr cannot. follow_symlinks cannot go with an fd.
    follow = {} if isinstance(dir_fd_or_path, int) else {"follow_symlinks": False}
    try:
        if OVERLAY_OPAQUE_XATTR not in list_xattrs(dir_fd_or_path):
            return False
        return os.getxattr(dir_fd_or_path, OVERLAY_OPAQUE_XATTR, **follow) == b"y"
    except OSError:
        return False


def is_opaque(dir_fd: int, names: Iterator[str] | list[str] | set[str] | None = None) -> bool:
    """True if the directory open as ``dir_fd`` is opaque, in either format.

    ``names``, if the caller already listed the directory, saves a lookup.
    """
    if names is not None:
        if WH_OPAQUE in names:
            return True
    else:
        try:
            os.stat(WH_OPAQUE, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            pass
    return has_opaque_xattr(dir_fd)


# root_is_opaque's answers by (device, inode, ctime) of the directory: its marker (a file
# in it, or its xattr) cannot change without its ctime changing. Only a directory whose
# ctime is older than a clock tick or ten (the kernel stamps with a coarse clock: one
# changed in this tick may change again under the same ctime) is remembered. A filesystem
# that stamps whole seconds (ext4 with 128-byte inodes, ext3) gives a ctime on a second, and
# a directory changed 0.5 s ago may change again under it: such a one waits 3 s (FAT: 2 s).
_OPAQUE_ROOTS: dict[tuple[int, int, int], bool] = {}
_OPAQUE_ROOTS_MAX = 4096
_SETTLED_NS = 100_000_000
_SETTLED_WHOLE_SECONDS_NS = 3_000_000_000


def root_is_opaque(path: str, st: os.stat_result | None = None) -> bool:
    """Is the layer directory ``path`` (followed: a migrated layer may be a symlink)
    opaque at its root, in either format? Union engines ignore an opaque root, so the
    driver stacks no parent below such a layer. ``st``: the directory's stat, if the
    caller has it. Nothing more is asked of a directory unchanged since it was last
    answered (a get asks it of every lower: 100 of them for a layer 100 deep), else two
    system calls."""
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    key = (st.st_dev, st.st_ino, st.st_ctime_ns)
    known = _OPAQUE_ROOTS.get(key)
    if known is not None:
        return known
    answer = _marked_opaque(path)
    age = time.time_ns() - st.st_ctime_ns
    if age > (_SETTLED_WHOLE_SECONDS_NS if st.st_ctime_ns % 1_000_000_000 == 0
              else _SETTLED_NS):
        if len(_OPAQUE_ROOTS) >= _OPAQUE_ROOTS_MAX:
            _OPAQUE_ROOTS.clear()
        _OPAQUE_ROOTS[key] = answer
    return answer


def _marked_opaque(path: str) -> bool:
    try:
        os.stat(os.path.join(path, WH_OPAQUE), follow_symlinks=False)
        return True
    except FileNotFoundError:
        pass
    except OSError:  # cannot be looked into
        return False
    try:
        if OVERLAY_OPAQUE_XATTR not in os.listxattr(path):
            return False
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def is_union_xattr(name: str) -> bool:
    """A union engine's private attribute (see :data:`UNION_XATTR_PREFIXES`)."""
    return name.startswith(UNION_XATTR_PREFIXES)


def is_opaque_path(path: str) -> bool:
    """Is the directory at ``path`` opaque, in either format? (Not followed.)"""
    if has_opaque_xattr(path):
        return True
    try:
        os.lstat(path + "/" + WH_OPAQUE)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def opaque_xattr_listed(dir_fd: int, names: list[str]) -> bool:
    """Does the directory ``dir_fd``, whose xattr ``names`` the caller listed, carry
    overlay's opaque mark? Errors other than "no xattrs here" are raised."""
    if OVERLAY_OPAQUE_XATTR not in names:
        return False
    try:
        return os.getxattr(dir_fd, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError as exc:
        if exc.errno in NO_XATTRS:
            return False
        raise


def is_export_xattr(name: str) -> bool:
    """Extended attributes that belong to content (never overlay's own)."""
    return not name.startswith(OVERLAY_XATTR_PREFIX)


class WhiteoutFormat:
    """How one store writes whiteouts. Reading is format-agnostic (:func:`classify`)."""

    name: ClassVar[str]

    def make_whiteout(self, dir_fd: int, name: str, mode: int = 0o600) -> None:
        raise NotImplementedError

    def make_opaque(self, dir_fd: int) -> None:
        raise NotImplementedError

    def clear_opaque(self, dir_fd: int) -> None:
        """Remove an opaque marker of either format (no error if none)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(WH_OPAQUE, dir_fd=dir_fd)
        with contextlib.suppress(OSError):
            os.removexattr(dir_fd, OVERLAY_OPAQUE_XATTR)

    def whiteout_path_name(self, name: str) -> str:
        """The directory-entry name a whiteout of ``name`` occupies in this format."""
        raise NotImplementedError

    def normalize(self, root: str, set_aside: SetAside | None = None) -> int:
        """Rewrite whiteouts of the other format under ``root`` into this one.

        Each new marker gets the owner, permissions and times of the one it replaces.
        Idempotent and crash-safe: the new marker is written before the old one is
        removed, so a re-run after a kill finishes the job. No symlink is followed
        (``root`` included) and no mount point crossed. Returns the entries rewritten
        or set aside.

        AUFS housekeeping (``.wh..wh.*``) is no whiteout: the aufs format keeps it
        where it is (no union shows it). The overlay format has no such names and
        kernel overlayfs would show them as files, so there each one found is handed
        to ``set_aside(dir_fd, name, path_below_root)``, which must take it out of the
        directory (the converter moves it to the store's attic). Without ``set_aside``
        housekeeping is left in place.
        """
        return sum(self._normalize_dir(dir_fd, rel, entries, set_aside)
                   for dir_fd, rel, entries in deep.walk_dirs(root, self._enters))

    def _enters(self, entry: os.DirEntry[str]) -> bool:
        """Does :meth:`normalize` walk into the directory ``entry``?"""
        raise NotImplementedError

    def _normalize_dir(self, dir_fd: int, rel: str, entries: list[os.DirEntry[str]],
                       set_aside: SetAside | None) -> int:
        """Rewrite the markers of one directory (its subdirectories come on their own)."""
        raise NotImplementedError


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def whiteout_tar_mode(st_mode: int) -> int:
    """The permission bits of a whiteout in a layer tar: its marker's own, or 0600 (as
    Docker exports them) for a marker with none — kernel overlayfs makes its 0:0 devices
    with mode 0."""
    return stat.S_IMODE(st_mode) or 0o600


def copy_marker_meta(dir_fd: int, name: str, old: os.stat_result) -> None:
    """Give the marker ``name`` (a file or device just made, never a symlink) the owner,
    permissions (as a layer tar shows them: :func:`whiteout_tar_mode`) and times of the
    marker ``old`` it replaces, so that a diff gives the same entry before and after."""
    if os.geteuid() == 0:
        # Only root may give a file away; for anyone else the owner stays theirs.
        os.chown(name, old.st_uid, old.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod(name, whiteout_tar_mode(old.st_mode), dir_fd=dir_fd)
    os.utime(name, ns=(old.st_atime_ns, old.st_mtime_ns), dir_fd=dir_fd,
             follow_symlinks=False)


class AufsWhiteouts(WhiteoutFormat):
    """``.wh.<name>`` files and ``.wh..wh..opq`` — Docker's aufs store and every layer tar."""

    name = "aufs"

    def whiteout_path_name(self, name: str) -> str:
        return WH_PREFIX + name

    def make_whiteout(self, dir_fd: int, name: str, mode: int = 0o600) -> None:
        """A new empty ``.wh.<name>``. One already there is replaced, never opened: it
        may be a hard link (kernel AUFS links every whiteout of a branch to
        ``.wh..wh.aufs``), and the metadata its caller gives the marker next would
        land on every name of that inode."""
        marker = WH_PREFIX + name
        try:
            fd = os.open(marker, safefs.O_NEW, mode & 0o7777, dir_fd=dir_fd)
        except FileExistsError:
            os.unlink(marker, dir_fd=dir_fd)
            fd = os.open(marker, safefs.O_NEW, mode & 0o7777, dir_fd=dir_fd)
        os.close(fd)

    def make_opaque(self, dir_fd: int) -> None:
        """The opaque marker, an empty file: one there is kept if it is a regular file,
        else replaced, never opened (a FIFO would block the open)."""
        try:
            fd = os.open(WH_OPAQUE, safefs.O_NEW, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            if stat.S_ISREG(os.lstat(WH_OPAQUE, dir_fd=dir_fd).st_mode):
                return
            os.unlink(WH_OPAQUE, dir_fd=dir_fd)
            fd = os.open(WH_OPAQUE, safefs.O_NEW, 0o600, dir_fd=dir_fd)
        os.close(fd)

    def _enters(self, entry: os.DirEntry[str]) -> bool:
        return not entry.name.startswith(WH_META_PREFIX)  # housekeeping: not content

    def _normalize_dir(self, dir_fd: int, rel: str, entries: list[os.DirEntry[str]],
                       set_aside: SetAside | None) -> int:
        count = 0
        if has_opaque_xattr(dir_fd):
            self.make_opaque(dir_fd)
            os.removexattr(dir_fd, OVERLAY_OPAQUE_XATTR)
            count += 1
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue
            if not _maybe_device(entry):
                continue
            st = entry.stat(follow_symlinks=False)
            if not is_overlay_whiteout_mode(st.st_mode, st.st_rdev):
                continue
            if not entry.name.startswith(WH_PREFIX):
                self.make_whiteout(dir_fd, entry.name, st.st_mode)
                copy_marker_meta(dir_fd, WH_PREFIX + entry.name, st)
            os.unlink(entry.name, dir_fd=dir_fd)
            count += 1
        return count


class OverlayWhiteouts(WhiteoutFormat):
    """0:0 character devices and ``trusted.overlay.opaque=y`` — kernel overlayfs."""

    name = "overlay"

    def whiteout_path_name(self, name: str) -> str:
        return name

    def make_whiteout(self, dir_fd: int, name: str, mode: int = 0o600) -> None:
        os.mknod(name, stat.S_IFCHR | (mode & 0o7777), 0, dir_fd=dir_fd)

    def make_opaque(self, dir_fd: int) -> None:
        os.setxattr(dir_fd, OVERLAY_OPAQUE_XATTR, b"y")

    def _enters(self, entry: os.DirEntry[str]) -> bool:
        return classify_name(entry.name).kind is not Kind.HOUSEKEEPING  # set aside

    def _normalize_dir(self, dir_fd: int, rel: str, entries: list[os.DirEntry[str]],
                       set_aside: SetAside | None) -> int:
        count = 0
        names = {e.name for e in entries}
        for entry in entries:
            kind = classify_name(entry.name)
            if kind.kind is Kind.HOUSEKEEPING:
                if set_aside is not None:
                    set_aside(dir_fd, entry.name, _join(rel, entry.name))
                    count += 1
                continue
            if entry.is_dir(follow_symlinks=False):
                continue
            if kind.kind is Kind.OPAQUE:
                self.make_opaque(dir_fd)
                os.unlink(entry.name, dir_fd=dir_fd)
                count += 1
            elif kind.kind is Kind.WHITEOUT and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                if kind.target not in names:
                    self.make_whiteout(dir_fd, kind.target, st.st_mode)
                    names.add(kind.target)
                    copy_marker_meta(dir_fd, kind.target, st)
                elif _is_overlay_whiteout_at(dir_fd, kind.target):
                    copy_marker_meta(dir_fd, kind.target, st)  # made by a killed run
                # else a real entry of that name stands here: in overlayfs it already
                # hides the lower ones, and the marker has nothing left to do.
                os.unlink(entry.name, dir_fd=dir_fd)
                count += 1
        return count


def _is_overlay_whiteout_at(dir_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return is_overlay_whiteout_mode(st.st_mode, st.st_rdev)


AUFS = AufsWhiteouts()
OVERLAY = OverlayWhiteouts()
FORMATS: dict[str, WhiteoutFormat] = {AUFS.name: AUFS, OVERLAY.name: OVERLAY}


def get_format(name: str) -> WhiteoutFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown whiteout format {name!r} (known: aufs, overlay)") from None
