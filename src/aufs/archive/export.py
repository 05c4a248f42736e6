"""Layer -> tar stream, in the Docker / OCI layer format whatever the store's whiteouts.

:func:`export_layer` walks ``diff/<id>`` (one directory fd at a time, entries sorted by
name as Docker's walk does, each directory before its contents) and yields:

- plain files with numeric owner, full mode, mtime (seconds), xattrs (PAX
  ``SCHILY.xattr.*``; never ``trusted.overlay.*``), symlinks, fifos, devices, and hard
  links (the first name of an inode stores the data, later names link to it);
- a whiteout of either format (AUFS ``.wh.<name>`` file, overlay 0:0 char device) as an
  empty regular member ``.wh.<name>``;
- an opaque directory of either format as the directory, then ``<dir>/.wh..wh..opq``;
- nothing of AUFS housekeeping (``.wh..wh.*``) and no member for the layer root; an
  opaque root (which hides every parent) as ``.wh..wh..opq``, first.

The walk is a generator, run by the reader of the stream (:mod:`aufs.archive.stream`):
nothing happens until the caller reads, and memory stays constant whatever the layer size.
"""

from __future__ import annotations

import errno
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from stat import S_IFLNK
from typing import IO, TYPE_CHECKING

from aufs._sys import safefs
from aufs._sys.deep import DirStack
from aufs._sys.files import list_xattrs
from aufs.archive.entries import (
    S_IFMT,
    S_IFREG,
    Members,
    whiteout_name,
)
from aufs.archive.stream import Member, tar_stream
from aufs.archive.tarwrite import (
    BLOCK,
    REGTYPE,
    simple_header,
    simple_header_into,
    symlink_header_into,
)
from aufs.archive.types import ChangeKind
from aufs.whiteout import (
    WH_PREFIX,
    Kind,
    classify_entry,
    classify_name,
    has_opaque_xattr,
    whiteout_tar_mode,
)

if TYPE_CHECKING:
    from aufs.archive.change import Change

__all__ = ["export_changes", "export_dir", "export_layer"]


# kinds of listed entries
_REG, _DIR, _LNK, _OTHER, _WH_FILE, _WH_DEV = range(6)

# (member name, kind, the entry where its stat is still needed: whiteouts). Plain names
# keep no DirEntry: a directory of 200,000 files is listed whole, and the entries alone
# took a diff of it past 64 MiB.
_Item = tuple[bytes, int, "os.DirEntry[str] | None"]
_BY_NAME = operator.itemgetter(0)

# _walk_tree's batches of small files (see there). 8 KiB: above it the copies (into the
# batch, into the reader's buffer) cost more than the per-member Python they save.
_INLINE_MAX = 8 << 10
_BATCH = 64 << 10
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
_ZEROS = bytes(BLOCK)


def _list_dir(fd: int) -> tuple[list[_Item], bool]:
    """A directory's exportable entries sorted by member name, and whether it holds an
    AUFS opaque marker. Stats only character devices and ``.wh.`` names."""
    items: list[_Item] = []
    append = items.append
    opaque = False
    with os.scandir(fd) as it:
        for e in it:
            name = e.name
            if name.startswith(WH_PREFIX):
                kind = classify_entry(e).kind
                if kind is Kind.OPAQUE:
                    opaque = True
                elif kind is Kind.WHITEOUT:
                    append((name.encode("utf-8", "surrogateescape"), _WH_FILE, e))
                continue  # HOUSEKEEPING: never content
            if e.is_file(follow_symlinks=False):
                append((name.encode("utf-8", "surrogateescape"), _REG, None))
            elif e.is_dir(follow_symlinks=False):
                append((name.encode("utf-8", "surrogateescape"), _DIR, None))
            elif e.is_symlink():
                append((name.encode("utf-8", "surrogateescape"), _LNK, None))
            else:
                kind = classify_entry(e).kind
                if kind is Kind.WHITEOUT:
                    append((whiteout_name(b"", name), _WH_DEV, e))
                elif kind is Kind.PLAIN:
                    append((name.encode("utf-8", "surrogateescape"), _OTHER, None))
    items.sort(key=_BY_NAME)
    return items, opaque


def _walk_tree(root_fd: int) -> Iterator[Member]:
    """Members for everything under ``root_fd`` (not the root itself), pre-order.

    ``root_fd`` stays open (its owner closes it). The loop for plain regular files (most
    of a layer) is written out here, with the functions it calls bound to locals: it is
    the hot path of every diff.

    A plain file of at most ``_INLINE_MAX`` bytes whose data is in the page cache is read
    here (``preadv`` with ``RWF_NOWAIT``) into a batch: whole members (header, data,
    padding) one after the other, handed on as one member of about ``_BATCH`` bytes.
    Python pays per member, and a layer of small files is mostly that. A file not cached
    (or on a filesystem that cannot say) goes as its own member, read by the stream
    with its read-ahead; one read short (it shrank meanwhile) too, so the stream reports
    it where it did before.
    """
    members = Members()
    os_open, os_close, fstat, preadv = os.open, os.close, os.fstat, os.preadv
    o_file = safefs.O_FILE
    buf = memoryview(bytearray(_BATCH + _INLINE_MAX + 2 * BLOCK))
    pos = count = 0  # the batch: its bytes and members
    nowait = _NOWAIT
    link_inline = _INLINE_MAX >= 0  # tests turn batches off
    lstat_at, readlink, proc_path = os.stat, os.readlink, safefs.proc_path
    items, root_opaque = _list_dir(root_fd)
    if root_opaque or has_opaque_xattr(root_fd):
        yield members.opaque(b"", root_fd)
    walk: DirStack[bytes, _Item] = DirStack(root_fd, b"", items)
    try:
        for fd, prefix, it in walk:
            for key, kind, entry in it:
                arcname = prefix + key
                member: Member | None
                if kind == _REG:
                    try:
                        f = os_open(key, o_file, dir_fd=fd)
                    except OSError:  # vanished or replaced
                        member = members.regular(fd, key.decode("utf-8", "surrogateescape"),
                                                 arcname)
                    else:
                        try:
                            st = fstat(f)
                            names: list[str] | None = None
                            got = -1  # bytes read into the batch: -1 not there
                            if (st.st_mode & S_IFMT != S_IFREG or st.st_nlink > 1
                                    or len(arcname) > 100 or (names := list_xattrs(f))):
                                member = members.regular_fd(
                                    f, st, fd, key.decode("utf-8", "surrogateescape"),
                                    arcname, names)
                            else:
                                size = st.st_size
                                mtime = int(st.st_mtime)
                                if size <= _INLINE_MAX and nowait:
                                    start = pos + BLOCK
                                    try:
                                        got = preadv(f, [buf[start:start + size]], 0,
                                                     nowait) if size else 0
                                    except BlockingIOError:
                                        got = -1  # not cached
                                    except OSError as exc:
                                        if exc.errno != errno.EOPNOTSUPP:
                                            raise
                                        nowait = 0  # cannot tell: as before, always
                                        got = -1
                                    if got != size or not simple_header_into(
                                            buf, pos, arcname, st.st_mode, st.st_uid,
                                            st.st_gid, size, mtime):
                                        got = -1
                                if got < 0:
                                    member = (simple_header(arcname, st.st_mode, st.st_uid,
                                                            st.st_gid, size, mtime, REGTYPE),
                                              f, size, st.st_blocks * 512 < size)
                        except BaseException:
                            os_close(f)
                            raise
                        if got >= 0:  # in the batch
                            os_close(f)
                            end = pos + BLOCK + size
                            pos = end + (-size % BLOCK)
                            buf[end:pos] = _ZEROS[:pos - end]
                            count += 1
                            if pos >= _BATCH:
                                yield bytes(buf[:pos]), -1, count, False
                                pos = count = 0
                            continue
                elif kind == _DIR:
                    name = key.decode("utf-8", "surrogateescape")
                    opened = members.directory(fd, name, arcname + b"/")
                    if opened is None:
                        member = members.other(fd, name, arcname)
                    else:
                        dir_member, sub, opaque = opened
                        try:
                            sub_items, aufs_opaque = _list_dir(sub)
                        except BaseException:
                            os_close(sub)
                            raise
                        walk.push(sub, arcname + b"/", sub_items)
                        if pos:
                            yield bytes(buf[:pos]), -1, count, False
                            pos = count = 0
                        yield dir_member
                        if opaque or aufs_opaque:
                            yield members.opaque(arcname + b"/", sub)
                        break
                elif kind == _LNK:
                    # A plain symlink's header goes into the batch (the bytes
                    # Members.other makes); one hard-linked, with xattrs, replaced
                    # meanwhile or with a field that needs PAX goes by Members.other.
                    try:
                        st = lstat_at(key, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # vanished
                    if (link_inline and st.st_mode & S_IFMT == S_IFLNK
                            and st.st_nlink == 1):
                        try:
                            target = readlink(key, dir_fd=fd)
                        except FileNotFoundError:
                            continue
                        if (not list_xattrs(proc_path(fd, key))
                                and symlink_header_into(buf, pos, arcname, st.st_mode,
                                                        st.st_uid, st.st_gid,
                                                        int(st.st_mtime), target)):
                            pos += BLOCK
                            count += 1
                            if pos >= _BATCH:
                                yield bytes(buf[:pos]), -1, count, False
                                pos = count = 0
                            continue
                    member = members.other(fd, key.decode("utf-8", "surrogateescape"),
                                           arcname, st)
                elif kind == _OTHER:
                    member = members.other(fd, key.decode("utf-8", "surrogateescape"), arcname)
                else:
                    assert entry is not None  # whiteouts keep their entry
                    try:
                        wst = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    mode = (wst.st_mode & 0o7777 if kind == _WH_FILE
                            else whiteout_tar_mode(wst.st_mode))
                    member = members.whiteout(arcname, wst, mode)
                if member is not None:
                    if pos:
                        yield bytes(buf[:pos]), -1, count, False
                        pos = count = 0
                    yield member
        if pos:
            yield bytes(buf[:pos]), -1, count, False
    finally:
        walk.close()


def _stream(root: str, walk: Callable[[int], Iterator[Member]],
            on_close: Iterable[Callable[[], None]],
            at_end: Callable[[int], None] | None = None) -> IO[bytes]:
    root_fd = os.open(root, safefs.O_ROOT)

    def members() -> Iterator[Member]:
        yield from walk(root_fd)
        if at_end is not None:
            at_end(root_fd)  # may raise: the reader gets an error, not a short tar

    # Callbacks run last first: the root is closed before anything else (an unmount).
    return tar_stream(members(), name=root, on_close=[*on_close, lambda: os.close(root_fd)])


def export_layer(diff_dir: str, *, on_close: Iterable[Callable[[], None]] = (),
                 at_end: Callable[[int], None] | None = None) -> IO[bytes]:
    """The tar of a layer's own directory (``diff/<id>``), as a readable binary stream.

    Nothing is read until the stream is; ``on_close`` callbacks run when it is closed.
    ``at_end(root_fd)`` runs after the walk's last entry, before the end-of-archive
    blocks: an exception from it ends the stream with that error (a layer removed or
    replaced while it was read must not look like a complete, shorter tar).
    """
    return _stream(diff_dir, _walk_tree, on_close, at_end)


def export_dir(path: str, *, on_close: Iterable[Callable[[], None]] = ()) -> IO[bytes]:
    """The tar of a whole directory tree (Docker's ``archive.Tar``), same member format."""
    return export_layer(path, on_close=on_close)


class _ParentDirs:
    """The open directory of the last change's parent, reached component by component
    with ``O_NOFOLLOW`` from the root (so a symlink in the tree is never followed)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._path = "/"
        self._fd: int | None = root_fd

    def get(self, path: str) -> int | None:
        if path != self._path:
            self.close()
            self._path = path
            self._fd = self._open(path)
        return self._fd

    def _open(self, path: str) -> int | None:
        fd = self.root_fd
        for comp in path.strip("/").split("/"):
            if not comp:
                continue
            try:
                sub = os.open(comp, safefs.O_DIR, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                sub = -1
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # a symlink now stands where a directory was
                    raise
                sub = -1
            if fd != self.root_fd:
                os.close(fd)
            if sub < 0:
                return None
            fd = sub
        return fd

    def close(self) -> None:
        if self._fd is not None and self._fd != self.root_fd:
            os.close(self._fd)
        self._fd = None


def _walk_changes(changes: list[Change]) -> Callable[[int], Iterator[Member]]:
    def walk(root_fd: int) -> Iterator[Member]:
        members = Members()
        dirs = _ParentDirs(root_fd)
        try:
            for change in changes:
                parent, _, base = change.path.rpartition("/")
                prefix = os.fsencode(parent[1:] + "/") if parent else b""
                dir_fd = dirs.get(parent or "/")
                if change.kind is ChangeKind.DELETE:
                    st = os.fstat(dir_fd) if dir_fd is not None else None
                    yield members.whiteout(whiteout_name(prefix, base), st)
                    continue
                if dir_fd is None or classify_name(base).kind is Kind.HOUSEKEEPING:
                    continue
                # Any kind of entry; None if gone since the changes were computed.
                member = members.other(dir_fd, base, arcname=prefix + os.fsencode(base))
                if member is not None:
                    yield member
        finally:
            dirs.close()

    return walk


def export_changes(root: str, changes: Iterable[Change], *,
                   on_close: Iterable[Callable[[], None]] = ()) -> IO[bytes]:
    """The tar of ``changes`` read from the tree ``root`` (Docker's ``ExportChanges``).

    Added and modified paths are stored as they are in ``root`` (a directory alone, not
    its contents); deleted paths become ``.wh.<name>`` members. Sorted by path.
    """
    ordered = sorted(changes, key=lambda c: c.path)
    return _stream(root, _walk_changes(ordered), on_close)

