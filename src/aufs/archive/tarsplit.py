"""Byte-exact layer tars: what an apply records, and how an export rebuilds the same tar.

A layer tar generated from a directory never has the bytes of the tar the layer came
from (header fields, PAX records, padding, entry order, the tail all differ), so its
digest — the image's diff id — would change on every round trip. As containers/storage
does with tar-split, an apply into an empty layer records the tar as it streams by: every
byte that is not a regular file's content is kept (headers, extended headers, padding,
the end blocks and whatever followed them), and each file's content is kept only as a
reference — its path in the layer and its size. Export reads the record back, replays the
kept bytes and reads each file's content from the layer: the same tar, byte for byte.

The record is used only while the layer is as the apply left it. Applying stores a
*fingerprint* of the layer directory (every entry's path, inode number, ctime and mode;
the root's mode, owner, mtime and xattrs — the root's ctime changes when it is swapped
into place): a write, chmod, chown, xattr, link, a new or removed entry anywhere changes a
ctime or an mtime. Export compares it first, then checks the rebuilt tar's sha256
against the diff id recorded; on any difference the caller generates the tar instead.

File (``.aufs/tar-split/<id>``)::

    HEADER_SIZE bytes: b"aufs-tar-split 1\\n" + JSON {"diff_id", "size", "fingerprint"},
                       space-padded
    then a gzip stream of records:
      b"R" <u32 n> <n bytes>            bytes of the tar as they were
      b"F" <u64 size> <u16 n> <n bytes> a file's content: ``size`` bytes of that path
      b"N" <u32 n>                      n more tar entries passed (for a progress bar)

Recording holds in memory only the bytes not yet known to be content (a header, at most
a chunk of the stream); content that is not a file of the layer (an AUFS hard-link
target, a whiteout with data) is kept as bytes, up to ``MAX_PENDING``, past which the
tar is not recorded (export then generates it).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import io
import json
import os
import stat
import struct
from collections.abc import Callable, Iterator
from typing import IO, Protocol

from aufs._sys import safefs
from aufs._sys.deep import DirStack
from aufs._sys.files import list_xattrs
from aufs.observe import entry_hook

__all__ = ["Rebuilt", "Recorder", "Unusable", "fingerprint", "open_rebuilt"]

MAGIC = b"aufs-tar-split 1\n"
HEADER_SIZE = 512
MAX_PENDING = 64 << 20
_RAW = struct.Struct(">cI")
_FILE = struct.Struct(">cQH")
_COUNT = struct.Struct(">cI")
_CHUNK = 1 << 20
_RECORDS_BUFFER = 64 << 10
_FLUSH = 256 << 10


class Unusable(Exception):
    """No record for the layer, or the layer is no longer what was recorded."""


# -- the fingerprint of a layer directory ------------------------------------------------

def fingerprint(root: str) -> str:
    """A digest that changes when anything in the directory tree ``root`` changes."""
    h = hashlib.sha256()
    fd = os.open(root, safefs.O_DIR)
    try:
        st = os.fstat(fd)
        h.update(b"%d %d %d %d\n" % (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns))
        for name in sorted(list_xattrs(fd)):
            with contextlib.suppress(OSError):
                h.update(os.fsencode(name) + b"=" + os.getxattr(fd, name) + b"\n")
        _hash_tree(fd, h, st.st_dev)
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


_LINES = 4096  # fingerprint lines joined before they are hashed


def _hash_tree(root_fd: int, h: hashlib._Hash, dev: int) -> None:
    """Every entry below ``root_fd`` in name order, each directory's right after it:
    ``path\\0ino ctime_ns mode\\n``, hashed a few thousand lines at a time."""
    walk: DirStack[str, str] = DirStack(root_fd, "", sorted(os.listdir(root_fd)))
    lines: list[str] = []
    lstat, is_dir = os.lstat, stat.S_ISDIR
    try:
        for fd, rel, names in walk:
            for name in names:
                st = lstat(name, dir_fd=fd)
                mode = st.st_mode
                lines.append(f"{rel}{name}\0{st.st_ino} {st.st_ctime_ns} {mode}\n")
                if len(lines) >= _LINES:
                    h.update("".join(lines).encode("utf-8", "surrogateescape"))
                    lines.clear()
                if is_dir(mode):
                    if st.st_dev != dev:
                        raise Unusable(f"a filesystem is mounted in the layer at {rel}{name}")
                    sub = safefs.open_dir_at(fd, name)
                    try:
                        below = sorted(os.listdir(sub))
                    except BaseException:
                        os.close(sub)
                        raise
                    walk.push(sub, f"{rel}{name}/", below)
                    break
        h.update("".join(lines).encode("utf-8", "surrogateescape"))
    finally:
        walk.close()


# -- recording ------------------------------------------------------------------------------

class _Members(Protocol):
    members: int  # tar entries given out so far


class _NoMembers:
    members = 0


_NO_MEMBERS = _NoMembers()


class Recorder:
    """Record the tar an apply reads into the new file ``path``.

    :meth:`tap` wraps the tar source the reader pulls from; the extractor calls
    :meth:`payload` for each regular file it writes at its path, before reading its
    content; :meth:`finish` completes the record (or :meth:`discard` drops it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "xb")  # noqa: SIM115 (closed by finish/discard)
        self._file.write(bytes(HEADER_SIZE))
        self._gz = gzip.GzipFile(filename="", fileobj=self._file, mode="wb", compresslevel=1,
                                 mtime=0)
        self._out = bytearray()  # records not yet compressed (fewer, bigger writes)
        self._hash = hashlib.sha256()
        self.pos = 0          # stream offset of the next byte the source gives
        self._emitted = 0     # stream offset up to which the record is written
        # The chunks holding the bytes [_emitted, pos), as (stream offset, chunk); the
        # first may start before _emitted. Chunks are kept whole, never copied.
        self._pending: collections.deque[tuple[int, bytes]] = collections.deque()
        self._fd = -1
        self.broken: str | None = None  # why no record can be made
        self._members: _Members = _NO_MEMBERS  # counts the tar entries (:meth:`follow`)
        self._noted = 0       # entries extracted and written as N records

    def follow(self, members: _Members) -> None:
        """Count the tar entries by ``members.members``: the entries the reader gave
        out (all of them extracted but the one whose content :meth:`payload` is told)."""
        self._members = members

    def _note_entries(self, entries: int) -> None:
        if entries > self._noted:
            self._out += _COUNT.pack(b"N", entries - self._noted)
            self._noted = entries

    def tap(self, read: Callable[[], bytes], skip: Callable[[int], int] | None,
            fd: int) -> tuple[Callable[[], bytes], Callable[[int], int] | None]:
        """``read`` and ``skip`` of a tar source (``skip`` passes over bytes of the file
        ``fd`` unread), seen by this recorder."""
        self._fd = fd

        def tapped_read() -> bytes:
            chunk = read()
            if chunk:
                self._seen(chunk)
            return chunk

        if skip is None:
            return tapped_read, None

        def tapped_skip(n: int) -> int:
            offset = skip(n)
            self._skipped(offset, n)
            return offset

        return tapped_read, tapped_skip

    def _seen(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        start = self.pos
        self.pos += len(chunk)
        if self.broken is None and self.pos > self._emitted:
            self._pending.append((start, chunk))
            if self.pos - self._emitted > MAX_PENDING:
                self._give_up(f"more than {MAX_PENDING} bytes that are no file's content")

    def _skipped(self, offset: int, n: int) -> None:
        """``n`` bytes of the file passed over unread: content the extractor copies."""
        start = self.pos
        left, at = n, offset
        while left:  # the diff id covers them too
            data = os.pread(self._fd, min(left, _CHUNK), at)
            if not data:
                break
            self._hash.update(data)
            left -= len(data)
            at += len(data)
        self.pos += n
        if self.broken is None and self.pos > self._emitted:
            self._give_up(f"bytes {start}..{self.pos} were skipped but are no file's content")

    def _give_up(self, why: str) -> None:
        self.broken = why
        self._pending.clear()

    def _emit_raw(self, end: int) -> None:
        """Write the bytes [_emitted, end) as they were."""
        at = self._emitted
        for start, chunk in self._pending:
            if at >= end:
                break
            if start + len(chunk) <= at:
                continue
            piece = memoryview(chunk)[at - start:min(end - start, len(chunk))]
            self._raw(piece)
            at += len(piece)

    def _drop_below(self, offset: int) -> None:
        pending = self._pending
        while pending and pending[0][0] + len(pending[0][1]) <= offset:
            pending.popleft()

    def payload(self, offset: int, size: int, path: str) -> None:
        """The ``size`` bytes at stream ``offset`` are the content of ``path`` (cleaned,
        relative to the layer root). Once a file: kept flat."""
        if self.broken is not None or size == 0:
            return
        emitted = self._emitted
        if offset < emitted or offset > self.pos:
            self._give_up(f"content of {path!r} at {offset} is out of order")
            return
        out = self._out
        pending = self._pending
        if offset > emitted:  # the bytes since the last content: headers, padding
            start, chunk = pending[-1]
            if start <= emitted:  # the usual case: all in the last chunk
                out += _RAW.pack(b"R", offset - emitted)
                out += chunk[emitted - start:offset - start]
            else:
                self._emit_raw(offset)
        entries = self._members.members - 1  # the entries before this one
        if entries > self._noted:
            out += _COUNT.pack(b"N", entries - self._noted)
            self._noted = entries
        name = path.encode("utf-8", "surrogateescape")  # os.fsencode
        out += _FILE.pack(b"F", size, len(name))
        out += name
        if len(out) >= _FLUSH:
            self._gz.write(out)
            out.clear()
        emitted = self._emitted = offset + size
        if pending and pending[0][0] + len(pending[0][1]) <= emitted:
            self._drop_below(emitted)

    def _raw(self, data: bytes | memoryview) -> None:
        if data:
            self._out += _RAW.pack(b"R", len(data))
            self._out += data

    def finish(self, layer_dir: str) -> bool:
        """Complete the record of a tar that is now extracted into ``layer_dir``; False
        if none could be made (the file is then removed)."""
        if self.broken is None:
            self._emit_raw(self.pos)
            self._pending.clear()
            self._note_entries(self._members.members)
            self._gz.write(self._out)
        self._gz.close()
        if self.broken is not None:
            self.discard()
            return False
        header = MAGIC + json.dumps({
            "diff_id": "sha256:" + self._hash.hexdigest(), "size": self.pos,
            "fingerprint": fingerprint(layer_dir)}).encode()
        assert len(header) < HEADER_SIZE
        self._file.seek(0)
        self._file.write(header.ljust(HEADER_SIZE - 1) + b"\n")
        self._file.close()
        return True

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._gz.close()
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# -- rebuilding -----------------------------------------------------------------------------

class Rebuilt:
    """The recorded tar, read back (``read``); ``diff_id`` is what its sha256 must be.

    Reading raises :class:`Unusable` where a file is no longer there as recorded."""

    def __init__(self, header: dict[str, object], body: IO[bytes], layer_fd: int) -> None:
        diff_id = header.get("diff_id")
        if not isinstance(diff_id, str):
            raise Unusable("the record has no diff id")
        self.diff_id = diff_id
        # buffered in C: the replay reads a few bytes at a time (GzipFile.read is Python)
        records = io.BufferedReader(gzip.GzipFile(fileobj=body, mode="rb"),
                                    _RECORDS_BUFFER)
        self._chunks = _replay(records, layer_fd, entry_hook())
        self._buf = b""
        self._at = 0

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (at most one chunk's worth), ``b""`` at the end."""
        if self._at == len(self._buf):
            self._buf, self._at = next(self._chunks, b""), 0
        start = self._at
        self._at = len(self._buf) if n < 0 else min(len(self._buf), start + n)
        if start == 0 and self._at == len(self._buf):
            return self._buf
        return self._buf[start:self._at]


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _read_exact(f: _Readable, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise Unusable("the record is truncated")
    return data


def _replay(body: _Readable, layer_fd: int,
            on_entry: Callable[[], None] | None) -> Iterator[bytes]:
    parents = _Parents(layer_fd)
    try:
        while kind := body.read(1):
            if kind == b"N":
                (count,) = struct.unpack(">I", _read_exact(body, 4))
                if on_entry is not None:
                    for _ in range(count):
                        on_entry()
                continue
            if kind == b"R":
                (size,) = struct.unpack(">I", _read_exact(body, 4))
                while size:
                    data = _read_exact(body, min(size, _CHUNK))
                    size -= len(data)
                    yield data
            elif kind == b"F":
                size, length = struct.unpack(">QH", _read_exact(body, 10))
                yield from _content(parents, os.fsdecode(_read_exact(body, length)), size)
            else:
                raise Unusable(f"the record holds an unknown entry {kind!r}")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise Unusable(f"the record cannot be read: {exc}") from exc
    finally:
        parents.close()


class _Parents:
    """The directory of the file read last, kept open for the next one: a tar lists a
    directory's files one after the other."""

    def __init__(self, layer_fd: int) -> None:
        self._root = layer_fd
        self._head = ""
        self._fd = -1  # open for _head, or none

    def get(self, head: str) -> int:
        """fd of the directory ``head`` below the layer ("" the layer), owned here."""
        if not head:
            return self._root
        if head != self._head or self._fd < 0:
            self.close()
            self._fd = safefs.open_beneath(self._root, head)
            self._head = head
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _content(parents: _Parents, path: str, size: int) -> Iterator[bytes]:
    head, _, base = path.rpartition("/")
    try:
        fd = os.open(base, safefs.O_FILE, dir_fd=parents.get(head))
    except OSError as exc:
        raise Unusable(f"{path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise Unusable(f"{path} is no longer a file of {size} bytes")
        at = 0
        while at < size:
            data = os.pread(fd, min(_CHUNK, size - at), at)
            if not data:
                raise Unusable(f"{path} got shorter")
            at += len(data)
            yield data
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_rebuilt(split_path: str, layer_dir: str) -> Iterator[Rebuilt]:
    """The tar recorded in ``split_path``, rebuilt from ``layer_dir``; Unusable if there
    is no record or the layer changed since."""
    try:  # the store's own file: no symlink followed, no FIFO or device opened
        fd, _ = safefs.open_regular(split_path)
    except FileNotFoundError:
        raise Unusable("no tar-split recorded") from None
    except OSError as exc:
        raise Unusable(f"the record cannot be opened: {exc.strerror}") from None
    if fd < 0:
        raise Unusable("the record is not a regular file")
    f = os.fdopen(fd, "rb")
    with f:
        raw = f.read(HEADER_SIZE)
        if not raw.startswith(MAGIC):
            raise Unusable("not a tar-split record of this version")
        try:
            header = json.loads(raw[len(MAGIC):])
        except ValueError as exc:
            raise Unusable("the record's header is damaged") from exc
        if not isinstance(header, dict):
            raise Unusable("the record's header is damaged")
        try:
            now = fingerprint(layer_dir)
        except OSError as exc:
            raise Unusable(f"cannot read the layer: {exc.strerror}") from exc
        if header.get("fingerprint") != now:
            raise Unusable("the layer changed since it was applied")
        layer_fd = os.open(layer_dir, safefs.O_DIR)
        try:
            yield Rebuilt(header, f, layer_fd)
        finally:
            os.close(layer_fd)
