"""Layer tar members -> a directory tree, never leaving it (Docker's ``UnpackLayer``).

Every entry is created with ``*at`` calls relative to its parent directory, which is
reached from the root fd one component at a time with ``O_NOFOLLOW | O_DIRECTORY``
(:mod:`aufs.archive.dirfds`): a symlink on the way — already in the tree or made a moment
before by the same archive — raises :class:`BreakoutError`; so does a name that leaves
the tree once cleaned, and a hard link to something outside the tree or missing.
Symlink targets follow Docker's ``createTarFile``: the target joined to the link's own
directory must stay in the tree (:func:`symlink_escapes`), so ``a/l -> ../../etc`` is a
breakout while ``/etc/passwd`` (joined, ``a/etc/passwd``) is content. An existing entry
is replaced by unlinking it and creating anew, never by writing into it.

Whiteouts arrive as Docker/OCI ``.wh.`` entries: they remove what they delete within
this tree and are written in the given :class:`~aufs.whiteout.WhiteoutFormat` (or not
at all, when the tree is a mounted union that records deletions itself). AUFS hard links
into ``.wh..wh.plnk`` are resolved as ``UnpackLayer`` does; other ``.wh..wh.*``
housekeeping is skipped. Directory times are set last.

Memory does not grow with the number of files where the tree is known (``made``, as
:func:`aufs.store.staging.clone_tree` gives it): what is kept is per directory (its
flags, its deferred times), per whiteout marker and per AUFS pseudo-link, never per
regular file, symlink or device. In a known tree a non-directory that is on disk and not
in ``made`` is one this archive wrote (``made`` lists what was there before, and loses a
name when it is removed). The diff size is kept as a running sum.

Regular files are written by :mod:`aufs.archive.writefile`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import struct
from collections.abc import Callable

from aufs._sys import safefs
from aufs._sys.safefs import O_NEW
from aufs.archive import tarread as t
from aufs.archive.dirfds import DirFds
from aufs.archive.offload import Offload
from aufs.archive.writefile import (
    Policy,
    copy_range,
    map_os_error,
    set_xattrs,
    write_views,
)
from aufs.errors import ArchiveError, BreakoutError
from aufs.observe import entry_hook
from aufs.store.staging import DIR_FLAG
from aufs.whiteout import (
    WH_META_PREFIX,
    WH_OPAQUE,
    WH_PLINK,
    WH_PREFIX,
    Kind,
    WhiteoutFormat,
    classify_name,
    is_overlay_whiteout_mode,
)

__all__ = ["DIR_FLAG", "ENTRY_FLAG", "Unpacker", "clean_name", "symlink_escapes"]

# ``Unpacker.made`` flags of a path: a directory; an entry of this archive (an opaque
# directory keeps those).
ENTRY_FLAG = 2  # DIR_FLAG (1) is store.staging's: clone_tree's map is our ``made``
_WRITE_CHUNK = 1 << 20
# Names no tool could create through a path (PATH_MAX), and depths that would overflow
# the recursion of tree walks elsewhere: refused.
_PATH_MAX = 4096
_DEFAULT_ACL = "system.posix_acl_default"  # inherited by what is made in the directory
_MAX_DEPTH = 512
# A writer process (:mod:`aufs.archive.offload`) is started at the first regular file if
# the tar file holds OFFLOAD_BYTES from there, else once OFFLOAD_FILES were written here:
# it costs 20-60 ms to start, which a small layer would wait for.
OFFLOAD_BYTES = 32 << 20
OFFLOAD_FILES = 2048
# Where AUFS pseudo-link targets (".wh..wh.plnk/<ino>") wait during one extraction:
# a housekeeping name, so nothing ever exports or lists it.
_PLNK_TMP = f"{WH_META_PREFIX}apply-plnk"
_FMT = {t.CHR: stat.S_IFCHR, t.BLK: stat.S_IFBLK, t.FIFO: stat.S_IFIFO}


def clean_name(name: str) -> str:
    """Docker's cleaning of a member name: relative, normalized; "." is the root.
    A name that leaves the tree raises BreakoutError."""
    given = name
    if name.endswith("/"):
        name = name.rstrip("/")
    if name.startswith("./"):  # GNU tar's ``-C DIR .``: the rest may be clean
        name = name[2:]
    # Already clean (the usual case): no component can be "", "." or "..".
    if name and name[0] not in "./" and "//" not in name and "/." not in name:
        return name
    cleaned = posixpath.normpath(name.lstrip("/")) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise BreakoutError(f"tar entry {given!r} would be written outside the layer")
    return cleaned


def symlink_escapes(name: str, target: str) -> bool:
    """Does the symlink ``name`` (cleaned, relative to the tree) with ``target`` point out
    of the tree? Docker's rule (``createTarFile``): ``filepath.Join(dir of the link,
    target)`` must stay inside — lexically, the target's ``..`` climbing from the link's
    directory. An absolute target is joined the same way (Go's Join), so it stays inside
    unless its ``..`` climb above the link's directory's depth. Pure."""
    if ".." not in target:
        return False  # the usual case: nothing can climb
    depth = name.count("/")  # components of the link's directory
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part and part != ".":
            depth += 1
    return False


class Unpacker:
    """Extract members below ``root_fd``.

    ``made``: the paths already in the tree with their flags, if the caller knows them
    (it made the tree, e.g. a clone), else None — then the tree is searched as needed.
    ``source_fd``: the tar file, where the reader leaves data in it (``take``), and where
    a writer process reads file data (the stream starts at ``source_origin`` of it).
    ``on_content(offset, size, path)``: told, before its data is read, that a regular
    file's content is at ``offset`` of the stream and becomes the file ``path``
    (:mod:`aufs.archive.tarsplit` records the tar by it).
    """

    def __init__(self, root_fd: int, whiteouts: WhiteoutFormat | None, *,
                 made: dict[str, int] | None, policy: Policy, source_fd: int = -1,
                 source_origin: int = 0,
                 on_content: Callable[[int, int, str], None] | None = None) -> None:
        self.root_fd = root_fd
        self.on_content = on_content
        self.source_fd = source_fd
        self.source_origin = source_origin
        self.root = policy.root
        self.fix_bits = 0o7777 & ~policy.direct  # mode bits set by fchmod, after creation
        self.whiteouts = whiteouts
        self.known = made is not None
        self.made: dict[str, int] = made if made is not None else {}
        self.policy = policy
        # open directories by cleaned path
        self.dirs = DirFds(root_fd, self._made_dir, self._wait_for, self._in_the_way)
        # (path, (atime, mtime), mode to set at the end or -1)
        self.dir_meta: list[tuple[str, tuple[int, int], int]] = []
        self.plnk: dict[str, str] = {}          # pseudo-link basename -> its name in _PLNK_TMP
        self.plnk_fd = -1
        # A whiteout format whose marker has its own name (AUFS ``.wh.<name>``): a new
        # entry must drop the marker of its name, or the layer would both have and hide it.
        self.marker_named = whiteouts is not None and whiteouts.whiteout_path_name("x") != "x"
        # Non-directories go into ``made`` only where the tree is unknown (see above).
        self.track_files = not self.known
        # The tree's diff size, kept as we go while it is simple to (the tree started
        # empty, no directory was removed, no file with other links was replaced).
        self.total: int | None = 0 if made == {} else None
        self.plnk_size: dict[str, int] = {}  # pseudo-link (its name in _PLNK_TMP) -> size
        self.plnk_counted: set[str] = set()  # of them, those linked into the tree
        self.stale_whiteouts = self.marker_named and (made is None or bool(made))
        # Plain new regular files go to a writer process once there are enough of them:
        # only where this process knows the whole tree (``made``: it can tell which names
        # the writer may still be making), owns files as root, and reads a tar file.
        self.offload: Offload | None = None
        self.may_offload = self.known and policy.root and source_fd >= 0
        self.source_size = os.fstat(source_fd).st_size if source_fd >= 0 else 0
        self.files_written = 0
        # directory -> the group a file made in it gets (see _group_of_new)
        self.new_gid: dict[str, int] = {}
        self.revive = True  # may a directory be made where the layer had a whiteout of it?

    # -- the loop ----------------------------------------------------------------------

    def run(self, reader: t.TarReader) -> None:
        on_entry = entry_hook()
        try:
            while True:
                m = reader.next()
                if m is None:
                    break
                try:
                    self.entry(reader, m)
                except OSError as exc:
                    mapped = map_os_error(exc, m.name)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                except (ValueError, OverflowError, struct.error) as exc:
                    # a NUL byte in a PAX name, an owner or a time out of range
                    raise ArchiveError(f"tar entry {m.name!r}: {exc}") from exc
                if on_entry is not None:
                    on_entry()
            self.finish()
        except Exception:
            self._settle()  # the writer's error, if any, met an earlier entry: it wins
            raise

    def close(self) -> None:
        """Release every fd (and the pseudo-link directory); stop the writer process."""
        if self.offload is not None:
            self.offload.close()
        self.dirs.close()
        if self.plnk_fd >= 0:
            os.close(self.plnk_fd)
            self.plnk_fd = -1
            with contextlib.suppress(OSError):
                safefs.remove_at(self.root_fd, _PLNK_TMP)

    # -- directories -------------------------------------------------------------------

    def _made_dir(self, path: str, replaced: bool) -> None:
        """A directory made because a path below it came first (Docker: ``MkdirAll``).
        Where the layer had a whiteout of its name (``replaced``: an overlay one, see
        ``_in_the_way``), it is made as an explicit entry would be: opaque, the whiteout
        gone."""
        self.made[path] = DIR_FLAG
        head, _, base = path.rpartition("/")
        if replaced or (
                self.revive and self._drop_stale_marker(self.dir_fd(head), head, base)):
            self._opaque_new(path)

    def _in_the_way(self, parent_fd: int, path: str, base: str) -> bool:
        """An overlay whiteout where a directory is wanted goes (see ``_made_dir``)."""
        if self.whiteouts is None or self.marker_named or not self.revive:
            return False
        st = os.lstat(base, dir_fd=parent_fd)
        if not is_overlay_whiteout_mode(st.st_mode, st.st_rdev):
            return False
        self.remove(parent_fd, path, base)
        return True

    def _drop_stale_marker(self, parent_fd: int, head: str, base: str) -> bool:
        """Remove the AUFS whiteout of ``base`` (in ``head``) if there is one: the layer
        has the name again."""
        if not self.stale_whiteouts:
            return False
        assert self.whiteouts is not None
        marker = self.whiteouts.whiteout_path_name(base)
        # A known tree (the staging clone) lists every marker in ``made``: no unlink
        # attempt per entry where there is nothing to unlink.
        path = f"{head}/{marker}" if head else marker
        if self.known and path not in self.made:
            return False
        self.made.pop(path, None)
        return safefs.remove_at(parent_fd, marker)

    def _wait_for(self, path: str) -> None:
        """Wait for the writer process if ``path`` is a file it may still be making."""
        if self.offload is not None and path in self.offload.queued:
            self.offload.barrier()

    def _settle(self) -> None:
        """Wait for the writer process (before touching what it may be making)."""
        if self.offload is not None:
            self.offload.barrier()

    def dir_fd(self, path: str) -> int:
        """fd of the directory ``path`` (see :meth:`DirFds.get`)."""
        return self.dirs.get(path)

    def remove(self, parent_fd: int, path: str, base: str) -> bool:
        """Remove ``path`` (``base`` in ``parent_fd``), a whole tree if a directory."""
        is_dir = self.made.pop(path, 0) & DIR_FLAG
        if is_dir:
            self._settle()  # the writer may be making files below it
            self.new_gid.clear()
        else:
            self._wait_for(path)
        self.dirs.forget(path)
        if self.total is not None:
            if is_dir:
                self.total = None  # a tree goes: count at the end instead
            else:
                self._uncount(parent_fd, base)
        return safefs.remove_at(parent_fd, base)

    def _uncount(self, parent_fd: int, base: str) -> None:
        """The non-directory ``base`` is about to go: its bytes leave the running sum."""
        assert self.total is not None
        try:
            st = os.lstat(base, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        except NotADirectoryError:  # a path below a file: nothing there
            return
        if stat.S_ISDIR(st.st_mode):  # not ours to know (an unknown tree's)
            self.total = None
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                self.total = None  # its other links may keep it: count at the end
            else:
                self.total -= st.st_size

    @property
    def size(self) -> int | None:
        """Bytes of the regular files in the tree, each inode once (``diff_size``), if
        known without a walk; else None. Valid after :meth:`finish`."""
        return self.total

    # -- one member --------------------------------------------------------------------

    def entry(self, reader: t.TarReader, m: t.Member) -> None:
        self.dirs.trim()
        name = clean_name(m.name)
        if name == ".":
            self._root(m)
            return
        if len(name) >= _PATH_MAX or name.count("/") >= _MAX_DEPTH:
            raise ArchiveError(f"tar entry {m.name[:100]!r}…: a path longer than "
                               f"{_PATH_MAX - 1} bytes or deeper than {_MAX_DEPTH} levels")
        offload = self.offload
        if offload is not None and name in offload.queued:
            offload.barrier()  # the writer may still be making it
        head, _, base = name.rpartition("/")
        if WH_PREFIX in name:
            self.revive = False  # a whiteout or marker below `d` does not bring `d` back
            try:
                if self._special(reader, m, name, head, base):
                    return
            finally:
                self.revive = True
        parent = self.dirs.get(head)
        kind = m.kind
        if kind == t.REG:
            self._regular(reader, m, name, parent, head, base)
        elif kind == t.DIR:
            self._dir(m, name, parent, base)
        elif kind == t.LNK:
            self._hardlink(m, name, parent, base)
        elif kind == t.SYM:
            self._symlink(m, name, parent, base)
        else:
            self._node(m, name, parent, base)
        if self.stale_whiteouts and self._drop_stale_marker(parent, head, base) and (
                kind == t.DIR):
            self._opaque_new(name)

    def _opaque_new(self, name: str) -> None:
        """A directory made where this layer had a whiteout of its name: the lower
        layers' directory stays hidden (OCI: a whiteout hides the lower entry; the
        layer's own one shows), so the new one is opaque."""
        if self.whiteouts is not None:
            self.whiteouts.make_opaque(self.dir_fd(name))
            self._record_opaque(name)

    def _record_opaque(self, path: str) -> None:
        if self.marker_named:  # the marker is a file: an entry of this archive
            self.made[f"{path}/{WH_OPAQUE}" if path else WH_OPAQUE] = ENTRY_FLAG

    def _special(self, reader: t.TarReader, m: t.Member, name: str, head: str,
                 base: str) -> bool:
        """Whiteouts, opaque markers and AUFS housekeeping; False for plain content."""
        if name.startswith(WH_META_PREFIX):
            first = name.split("/", 1)[0]
            if first == WH_PLINK and head and m.kind == t.REG:
                self._keep_plnk(reader, m, base)
                return True
            if classify_name(first).kind is Kind.HOUSEKEEPING:
                return True
        if WH_PREFIX in head and any(
                classify_name(c).kind is not Kind.PLAIN for c in head.split("/")):
            return True  # inside a whiteout or AUFS housekeeping: never content
        kind = classify_name(base)
        if kind.kind is Kind.PLAIN:
            return False
        if kind.kind is Kind.HOUSEKEEPING:
            return True
        parent = self.dir_fd(head)
        if kind.kind is Kind.OPAQUE:
            self._opaque(head, parent, m)
        else:
            self._whiteout(head, parent, kind.target, m)
        return True

    def _root(self, m: t.Member) -> None:
        if m.kind != t.DIR:
            raise ArchiveError(f"tar entry {m.name!r} names the layer root: not a directory")
        fd = self.root_fd
        self._settle()  # the writer knows the group new files get in it: it may change
        self.new_gid.pop("", None)
        self.policy.chown(fd, m.uid, m.gid)
        if m.xattrs:
            self._before_default_acl(m)
            set_xattrs(fd, m.xattrs)
        os.fchmod(fd, m.mode)
        self.dir_meta.append((".", _times(m), -1))

    def _before_default_acl(self, m: t.Member) -> None:
        """An existing directory given a default ACL: files the writer has queued for it
        must exist first, or they would inherit it (written here, they did exist)."""
        if any(key == _DEFAULT_ACL for key, _ in m.xattrs or ()):
            self._settle()

    def _whiteout(self, head: str, parent: int, target: str, m: t.Member) -> None:
        if target in ("", ".", ".."):
            raise BreakoutError(f"whiteout of {posixpath.join(head, target)!r}: not a name "
                                "in the layer")
        path = f"{head}/{target}" if head else target
        self.remove(parent, path, target)
        if self.whiteouts is not None:
            # A marker of that name already there is replaced, never written through: it
            # is a hard link to the live layer's (the staging clone), and one made by
            # kernel AUFS is also a hard link of .wh..wh.aufs and every other whiteout of
            # the branch. Docker's untar, too, removes what is there first.
            self._drop_stale_marker(parent, head, target)
            mode = m.mode & 0o777 or 0o600
            self.whiteouts.make_whiteout(parent, target, mode)
            marker = self.whiteouts.whiteout_path_name(target)
            self._marker_meta(parent, marker, mode, m, chmod=bool(mode & ~self.policy.direct))
            self.made[f"{head}/{marker}" if head else marker] = ENTRY_FLAG
            self.stale_whiteouts = self.marker_named

    def _marker_meta(self, parent: int, marker: str, mode: int, m: t.Member, *,
                     chmod: bool) -> None:
        """The entry's mode (``chmod``: not made with it, or the umask took bits), owner
        and times on the marker just made, as Docker's aufs store keeps them (a diff of
        the layer then gives the same entry back)."""
        if chmod:
            os.chmod(marker, mode, dir_fd=parent)
        self.policy.chown(marker, m.uid, m.gid, dir_fd=parent)
        os.utime(marker, ns=_times(m), dir_fd=parent, follow_symlinks=False)

    def _opaque(self, head: str, dir_fd: int, m: t.Member) -> None:
        self._settle()
        self._prune(head, dir_fd)  # a marker not of this archive goes too
        if self.whiteouts is not None:
            self.whiteouts.make_opaque(dir_fd)
            if self.marker_named:  # a file (AUFS): the entry's metadata, as a whiteout's
                mode = m.mode & 0o777 or 0o600  # made 0600, less what the umask took
                chmod = mode != 0o600 or bool(0o600 & ~self.policy.direct)
                self._marker_meta(dir_fd, WH_OPAQUE, mode, m, chmod=chmod)
            self._record_opaque(head)

    def _prune(self, path: str, dir_fd: int) -> None:
        """Remove what is in the directory and was not written by this archive."""
        with os.scandir(dir_fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in entries:
            sub = f"{path}/{name}" if path else name
            if sub == _PLNK_TMP:
                continue
            flags = self.made.get(sub)
            # a known tree's non-directory not in ``made``: written by this archive
            ours = (self.known and not is_dir) if flags is None else flags & ENTRY_FLAG
            if not ours:
                self.remove(dir_fd, sub, name)
            elif is_dir:  # not cached: a deep prune must not pile up open fds
                fd = safefs.open_dir_at(dir_fd, name)
                try:
                    self._prune(sub, fd)
                finally:
                    os.close(fd)

    def _keep_plnk(self, reader: t.TarReader, m: t.Member, base: str) -> None:
        if self.plnk_fd < 0:
            self.plnk_fd = safefs.open_dir_at(self.root_fd, _PLNK_TMP, create=0o700)
        tmp = f"{len(self.plnk)}"
        self._write(reader, m, self.plnk_fd, tmp, None)
        self.plnk[base] = tmp
        self.plnk_size[tmp] = m.size

    # -- creating entries --------------------------------------------------------------

    def _replace(self, parent: int, name: str, base: str, make: Callable[[], object]) -> None:
        """Run ``make`` (creates ``base``), replacing whatever is there first."""
        try:
            make()
        except FileExistsError:
            self.remove(parent, name, base)
            make()

    def _regular(self, reader: t.TarReader, m: t.Member, name: str, parent: int,
                 head: str, base: str) -> None:
        size = m.size
        offset = reader.offset
        if self.on_content is not None:
            self.on_content(offset, size, name)
        offload = self.offload
        if self.may_offload and not m.xattrs and name not in self.made and (
                self._offload_pays(reader) if offload is None else not offload.behind()):
            if offload is not None:
                self._hand_over(offload, reader, m, name, offset)
            else:
                self._offload(reader, m, name, parent, head, base)
        else:
            self.files_written += 1
            self._write(reader, m, parent, base, name, head)
        if self.track_files:
            self.made[name] = ENTRY_FLAG
        if self.total is not None:
            self.total += size

    def _offload_pays(self, reader: t.TarReader) -> bool:
        left = self.source_size - self.source_origin - reader.offset
        return left >= OFFLOAD_BYTES or self.files_written >= OFFLOAD_FILES

    def _offload(self, reader: t.TarReader, m: t.Member, name: str, parent: int, head: str,
                 base: str) -> None:
        """Start the writer process and hand it this regular file (later ones are handed
        over by :meth:`_regular` itself)."""
        self.offload = Offload.start(self.root_fd, self.source_fd)
        if self.offload is None:  # no process here: write them all ourselves
            self.may_offload = False
            self._write(reader, m, parent, base, name, head)
            return
        self._hand_over(self.offload, reader, m, name, reader.offset)

    def _hand_over(self, offload: Offload, reader: t.TarReader, m: t.Member,
                   name: str, offset: int) -> None:
        """The writer process makes this regular file (its data at stream ``offset``);
        it reads the data from the file."""
        mode = m.mode
        chmod = mode & self.fix_bits
        offset += self.source_origin
        if m.size:
            reader.drop(m.size)
        atime = m.atime_ns
        offload.file(m.name, name, 0o600 if chmod else mode, mode if chmod else None, m.uid,
                     m.gid, m.mtime_ns, m.mtime_ns if atime is None else atime, offset, m.size)

    def _group_of_new(self, head: str, parent: int) -> int:
        """The group a new file gets in the directory ``head`` (open as ``parent``): its
        own where it is setgid, else ours. Known until the directory's entry changes it."""
        gid = self.new_gid.get(head)
        if gid is None:
            st = os.fstat(parent)
            gid = st.st_gid if st.st_mode & stat.S_ISGID else self.policy.gid
            self.new_gid[head] = gid
        return gid

    def _write(self, reader: t.TarReader, m: t.Member, parent: int, base: str,
               name: str | None, head: str | None = None) -> None:
        """Create and fill a regular file (``name``: replace what holds it; None: the
        name is known to be free) in the directory ``head`` (if known: no ``fchown``
        where the file has its owner already). The hot path of extraction: kept flat."""
        mode = m.mode
        chmod = mode & self.fix_bits  # bits the file cannot be created with
        try:
            fd = os.open(base, O_NEW, 0o600 if chmod else mode, dir_fd=parent)
        except FileExistsError:
            if name is None:
                raise
            self.remove(parent, name, base)
            fd = os.open(base, O_NEW, 0o600 if chmod else mode, dir_fd=parent)
        try:
            left = m.size
            if left:
                if self.source_fd >= 0 or left <= _WRITE_CHUNK:
                    views, offset, length = reader.take(left)
                    write_views(fd, views)
                    if length:
                        copy_range(self.source_fd, offset, length, fd)
                else:
                    while reader.left:
                        view = reader.chunk(_WRITE_CHUNK)
                        while view:
                            view = view[os.write(fd, view):]
            if self.root:
                if (m.uid != self.policy.uid or head is None
                        or m.gid != self._group_of_new(head, parent)):
                    os.fchown(fd, m.uid, m.gid)
            else:
                self.policy.chown(fd, m.uid, m.gid)
            if m.xattrs:
                set_xattrs(fd, m.xattrs)
            if chmod:
                os.fchmod(fd, mode)
            atime = m.atime_ns
            os.utime(fd, ns=(m.mtime_ns if atime is None else atime, m.mtime_ns))
        finally:
            os.close(fd)

    def _dir(self, m: t.Member, name: str, parent: int, base: str) -> None:
        policy = self.policy
        defer = not policy.root and m.mode & 0o700 != 0o700  # we must still write into it
        mode, chmod = policy.create_mode(m.mode | 0o700 if defer else m.mode)
        if chmod:
            mode = 0o700
        over_whiteout = existed = False
        try:
            os.mkdir(base, mode, dir_fd=parent)
            chmod = chmod or mode != m.mode
        except FileExistsError:
            existed = True
            # The writer knows the group new files get in a directory: it may change.
            self._settle()
            # An existing directory is merged, its metadata replaced; anything else goes.
            known_dir = self.known and self.made.get(name, 0) & DIR_FLAG
            if not known_dir:
                st = os.lstat(base, dir_fd=parent)
                if not stat.S_ISDIR(st.st_mode):
                    over_whiteout = is_overlay_whiteout_mode(st.st_mode, st.st_rdev)
                    self.remove(parent, name, base)
                    os.mkdir(base, mode, dir_fd=parent)
            chmod = True
        self.made[name] = DIR_FLAG | ENTRY_FLAG
        self.new_gid.pop(name, None)  # its owner and mode change
        if over_whiteout:
            self._opaque_new(name)
        policy.chown(base, m.uid, m.gid, dir_fd=parent)
        if m.xattrs:
            if existed:
                self._before_default_acl(m)
            set_xattrs(self.dir_fd(name), m.xattrs)
        if chmod and not defer:  # just made or checked: a directory, not a symlink
            os.chmod(base, m.mode, dir_fd=parent)
        self.dir_meta.append((name, _times(m), m.mode if defer else -1))

    def _symlink(self, m: t.Member, name: str, parent: int, base: str) -> None:
        if symlink_escapes(name, m.linkname):
            raise BreakoutError(f"symlink {m.name!r} -> {m.linkname!r} points outside the "
                                "layer")
        self._replace(parent, name, base, lambda: os.symlink(m.linkname, base, dir_fd=parent))
        if self.track_files:
            self.made[name] = ENTRY_FLAG
        self._meta_at(m, parent, base, chmod=False)

    def _node(self, m: t.Member, name: str, parent: int, base: str) -> None:
        fmt = _FMT[m.kind]
        dev = os.makedev(m.devmajor, m.devminor) if fmt != stat.S_IFIFO else 0
        self._replace(parent, name, base,
                      lambda: os.mknod(base, fmt | 0o600, dev, dir_fd=parent))
        if self.track_files:
            self.made[name] = ENTRY_FLAG
        self._meta_at(m, parent, base, chmod=True)

    def _meta_at(self, m: t.Member, parent: int, base: str, *, chmod: bool) -> None:
        self.policy.chown(base, m.uid, m.gid, dir_fd=parent)
        if m.xattrs:
            set_xattrs(safefs.proc_path(parent, base), m.xattrs)
        if chmod:  # just made by us, in a directory only we write: not a symlink
            os.chmod(base, m.mode, dir_fd=parent)
        os.utime(base, ns=_times(m), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, m: t.Member, name: str, parent: int, base: str) -> None:
        target = clean_name(m.linkname)
        if target.split("/", 1)[0] == WH_PLINK:
            tmp = self.plnk.get(posixpath.basename(target))
            if tmp is None:
                raise ArchiveError(f"hard link {m.name!r} to unknown AUFS pseudo-link "
                                   f"{m.linkname!r}")
            src_fd, src_base, owned = self.plnk_fd, tmp, False
        else:
            if target == ".":
                raise BreakoutError(f"hard link {m.name!r} to the layer root")
            if target == name or target.startswith(name + "/"):
                raise ArchiveError(f"hard link {m.name!r} to itself or below it")
            head, _, src_base = target.rpartition("/")
            try:
                self._wait_for(target)
                src_fd, owned = self.dirs.lookup(head), True
            except FileNotFoundError:
                raise BreakoutError(f"hard link {m.name!r} to missing "
                                    f"{m.linkname!r}") from None
            except (safefs.SymlinkInPathError, safefs.NotADirectoryInPathError) as exc:
                raise BreakoutError(f"hard link {m.name!r} to {m.linkname!r}: "
                                    f"{exc.strerror} ({exc.filename!r})") from None
        try:
            self._replace(parent, name, base, lambda: os.link(
                src_base, base, src_dir_fd=src_fd, dst_dir_fd=parent, follow_symlinks=False))
        except FileNotFoundError:
            raise BreakoutError(f"hard link {m.name!r} to missing "
                                f"{m.linkname!r}") from None
        except PermissionError:
            raise BreakoutError(f"hard link {m.name!r} to {m.linkname!r}, "
                                "which is not a file") from None
        finally:
            if owned:
                os.close(src_fd)
        if self.track_files:
            self.made[name] = ENTRY_FLAG
        if (self.total is not None and not owned and src_base not in self.plnk_counted
                and src_base in self.plnk_size):
            # an AUFS pseudo-link's bytes count once it is in the tree (a link to a file
            # of the tree adds none)
            self.plnk_counted.add(src_base)
            self.total += self.plnk_size[src_base]

    # -- the end -----------------------------------------------------------------------

    def finish(self) -> None:
        """Directory modes and times, last: creating their contents changed the times."""
        self._settle()
        if self.offload is not None and self.total is not None:
            self.offload.barrier(final=True)
            replaced = self.offload.replaced()
            self.total = None if replaced is None else self.total - replaced
        for name, times, mode in self.dir_meta:
            try:
                fd = self.dirs.lookup(name)
            except (FileNotFoundError, safefs.SymlinkInPathError,
                    safefs.NotADirectoryInPathError):
                continue  # replaced or removed later in the archive
            try:
                if mode >= 0:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=times)
            finally:
                os.close(fd)


def _times(m: t.Member) -> tuple[int, int]:
    return (m.atime_ns if m.atime_ns is not None else m.mtime_ns), m.mtime_ns
