"""One layer's whiteouts rewritten into a store format, in place, safe to kill anywhere.

Used by ``aufs convert`` (:mod:`aufs.convert`, which journals the store as a whole) and by
the pre-0.7 migration (:mod:`aufs.migrate`, whose AUFS layers may move into an overlay
store). Per layer:

1. the times of the directories about to change are saved in ``.aufs/convert/<id>.json``
   (kept from an earlier, killed attempt if there is one: those are the original times);
2. :meth:`WhiteoutFormat.normalize` rewrites the markers (the new one made before the old
   one goes, with its owner, mode and times); to overlay, AUFS housekeeping is moved into
   ``.aufs/attic/<id>/<its path>`` (kernel overlayfs would show it), to aufs it comes
   back from there (dropped if the layer lost its directory or has since got an entry
   of that name); the other engine's private xattrs go (never content, never exported);
3. the saved times are put back and the time file goes.

Every step is idempotent: running it again after a kill finishes the job.

Every write into the layer or the attic is made relative to a directory fd opened without
following a symlink (``*at`` calls, :mod:`aufs._sys.safefs`), also the copy and removal
of a move across filesystems: a directory of the layer swapped for a symlink meanwhile
never redirects one outside.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from aufs._sys import safefs
from aufs._sys.deep import DirStep, Enter, walk_dirs
from aufs._sys.files import ensure_dir, list_xattrs, write_atomic
from aufs.errors import DriverError
from aufs.store.chain import read_store_file
from aufs.store.layout import Layout
from aufs.whiteout import (
    AUFS,
    OVERLAY,
    OVERLAY_XATTR_PREFIX,
    WH_PREFIX,
    Kind,
    WhiteoutFormat,
    classify_name,
    has_opaque_xattr,
    is_overlay_whiteout_mode,
)

__all__ = ["LayerRewrite", "normalize_layer"]

_FUSE_XATTR_PREFIX = "user.fuseoverlayfs."  # fuse-overlayfs's own attributes
_PARTIAL = "~partial"  # a copy being made (cross-filesystem moves); "~" is never an id


@dataclass(slots=True)
class LayerRewrite:
    """What rewriting layers did (added up over layers by :mod:`aufs.convert`)."""

    rewritten: int = 0  # whiteouts and opaque markers rewritten
    set_aside: int = 0  # housekeeping entries moved into the attic
    restored: int = 0   # housekeeping entries moved back from the attic

    def add(self, other: LayerRewrite) -> None:
        self.rewritten += other.rewritten
        self.set_aside += other.set_aside
        self.restored += other.restored


def normalize_layer(layout: Layout, layer_id: str, path: str,
                    fmt: WhiteoutFormat) -> LayerRewrite:
    """Rewrite the layer directory ``path`` (the data of ``layer_id``) into ``fmt``,
    keeping directory times and the attic; idempotent, and safe to kill at any point.
    The caller holds the store lock."""
    manifest = layout.convert_manifest(layer_id)
    saved = _read_times(manifest)
    attic = layout.attic(layer_id)
    times = {**_dirs_to_touch(path, attic if fmt is AUFS else None), **saved}
    if times != saved:
        ensure_dir(layout.convert_dir)
        write_atomic(manifest, (json.dumps(times) + "\n").encode())
    counts = LayerRewrite()
    if fmt is OVERLAY:
        mover = _AtticMover(path, attic)
        counts.rewritten = fmt.normalize(path, set_aside=mover) - mover.count
        counts.set_aside = mover.count
        _drop_xattrs_below(path, _FUSE_XATTR_PREFIX)
    else:
        counts.rewritten = fmt.normalize(path)
        _drop_xattrs_below(path, OVERLAY_XATTR_PREFIX)  # after normalize read opaque ones
        counts.restored = _restore_attic(attic, path)
    _restore_times(path, times)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(manifest)
    return counts


def _drop_xattrs_below(path: str, prefix: str) -> None:
    """Remove the other engine's private attributes (never content, never exported) from
    every file and directory of the layer: kernel overlayfs would show fuse-overlayfs's
    ``user.fuseoverlayfs.*``, fuse-overlayfs kernel overlayfs's ``trusted.overlay.*``."""
    for fd, _, entries in walk_dirs(path, _no_marker):
        _drop_xattrs(fd, prefix)
        for e in entries:
            if e.is_file(follow_symlinks=False):
                _drop_xattrs(safefs.proc_path(fd, e.name), prefix)


def _no_marker(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(WH_PREFIX)


def _drop_xattrs(target: int | str, prefix: str) -> None:
    """From an open directory or a (not followed) path."""
    try:
        names = list_xattrs(target)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix):
            if isinstance(target, int):
                os.removexattr(target, name)
            else:
                os.removexattr(target, name, follow_symlinks=False)


_TIMES_MAX = 256 << 20  # a time a directory: 200,000 directories are ~20 MB


def _read_times(manifest: str) -> dict[str, list[int]]:
    """The directory times a conversion saved (:func:`normalize_layer`): {path relative
    to the layer: [atime, mtime]}; read as the store's own files are (no symlink, no
    FIFO, bounded); DriverError naming it if it is anything else."""
    try:
        raw = json.loads(read_store_file(manifest, _TIMES_MAX, "conversion time file"))
        if not isinstance(raw, dict):
            raise ValueError("no JSON object")
        times: dict[str, list[int]] = {}
        for rel, pair in raw.items():
            if rel and (os.path.isabs(rel) or os.path.normpath(rel) != rel
                        or rel.split("/")[0] == ".."):
                raise ValueError(f"{rel!r} is no path inside a layer")
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(type(t) is int for t in pair)):
                raise ValueError(f"{rel!r}: no [atime, mtime]")
            times[rel] = [pair[0], pair[1]]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, DriverError) as exc:
        why = str(exc).removeprefix(f"{manifest}: ")  # named once
        raise DriverError(f"{manifest}: unreadable: {why}") from exc
    return times


def _dirs_to_touch(path: str, attic: str | None) -> dict[str, list[int]]:
    """(atime, mtime) of every directory of the layer whose entries a conversion may
    change: it holds a marker of either format or housekeeping, is overlay-opaque, or
    gets housekeeping back from ``attic``. Keys are paths below the layer ("" = root)."""
    out: dict[str, list[int]] = {}
    for fd, rel, entries in walk_dirs(path, _no_marker):
        touched = has_opaque_xattr(fd)
        for e in entries:
            if touched:
                break
            if e.name.startswith(WH_PREFIX):
                touched = True
            elif not (e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False)
                      or e.is_symlink()):
                st = e.stat(follow_symlinks=False)
                touched = is_overlay_whiteout_mode(st.st_mode, st.st_rdev)
        if touched:
            st = os.fstat(fd)
            out[rel] = [st.st_atime_ns, st.st_mtime_ns]
    if attic is not None:
        for rel, _ in _attic_entries(attic):
            parent = rel.rpartition("/")[0]
            parent_fd = None if parent in out else _open_rel(path, parent)
            if parent_fd is not None:
                try:
                    st = os.fstat(parent_fd)
                    out[parent] = [st.st_atime_ns, st.st_mtime_ns]
                finally:
                    os.close(parent_fd)
    return out


def _restore_times(path: str, times: dict[str, list[int]]) -> None:
    for rel, (atime, mtime) in times.items():
        fd = _open_rel(path, rel)
        if fd is None:
            continue  # gone (a directory the layer no longer has)
        try:
            if os.fstat(fd).st_mtime_ns != mtime:  # untouched dirs keep their ctime
                os.utime(fd, ns=(atime, mtime))
        finally:
            os.close(fd)


def _open_rel(path: str, rel: str) -> int | None:
    """The directory ``rel`` below ``path``, one component at a time, no symlink followed;
    None if it is not there (or not a directory)."""
    root = os.open(path, safefs.O_DIR)
    if not rel:
        return root
    try:
        return safefs.open_beneath(root, rel)
    except (FileNotFoundError, safefs.SymlinkInPathError, safefs.NotADirectoryInPathError):
        return None
    finally:
        os.close(root)


# -- the attic of AUFS housekeeping ------------------------------------------------------


class _AtticMover:
    """``normalize``'s ``set_aside`` hook: moves a housekeeping entry of the layer at
    ``layer`` to the same path below ``attic``."""

    def __init__(self, layer: str, attic: str) -> None:
        self.layer = layer
        self.attic = attic
        self.count = 0

    def __call__(self, dir_fd: int, name: str, rel: str) -> None:
        dst_fd = _open_attic_dir(self.attic, rel.rpartition("/")[0])
        try:
            if _lexists_at(dst_fd, name):
                if os.fstat(dir_fd).st_dev == os.fstat(dst_fd).st_dev:
                    raise DriverError(f"cannot set {self.layer}/{rel} aside: "
                                      f"{self.attic}/{rel} exists")
                safefs.remove_at(dir_fd, name)  # a killed run published the copy already
            else:
                _move(dir_fd, name, dst_fd)
        finally:
            os.close(dst_fd)
        self.count += 1


def _open_attic_dir(attic: str, rel: str) -> int:
    """The directory ``rel`` below the attic, made (0700) where missing, one component at
    a time from the store's ``.aufs/attic``, no symlink followed."""
    top, _, layer_id = attic.rpartition("/")
    os.makedirs(top, 0o700, exist_ok=True)  # the store's own .aufs/attic
    fd = os.open(top, safefs.O_ROOT)
    try:
        for name in (layer_id, *(rel.split("/") if rel else ())):
            sub = safefs.open_dir_at(fd, name, create=0o700)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _attic_entries(attic: str) -> list[tuple[str, str]]:
    """(path below the layer, path in the attic) of each housekeeping entry set aside."""
    out: list[tuple[str, str]] = []
    for fd, rel, entries in _walk_attic(attic, _attic_dir):
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            if _PARTIAL in e.name:
                safefs.remove_at(fd, e.name)  # an unfinished copy
            elif classify_name(e.name).kind is Kind.HOUSEKEEPING:
                out.append((sub, f"{attic}/{sub}"))
    return out


def _walk_attic(attic: str, enter: Enter | None) -> Iterator[DirStep]:
    """The attic's directories (none if it is missing)."""
    try:
        fd = os.open(attic, safefs.O_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        yield from walk_dirs(fd, enter)
    finally:
        os.close(fd)


def _attic_dir(entry: os.DirEntry[str]) -> bool:
    """Not what is set aside or half copied."""
    return _PARTIAL not in entry.name and classify_name(entry.name).kind is not Kind.HOUSEKEEPING


def _restore_attic(attic: str, layer: str) -> int:
    """Move the housekeeping set aside from ``layer`` back; returns entries restored."""
    restored = 0
    for rel, _ in _attic_entries(attic):
        parent, _, name = rel.rpartition("/")
        src_fd = _open_rel(attic, parent)
        if src_fd is None:
            continue  # gone meanwhile
        try:
            fd = _open_rel(layer, parent)
            if fd is None:  # the directory went while the store was in overlay format
                safefs.remove_at(src_fd, name)
                continue
            try:
                if not _lexists_at(fd, name):
                    _move(src_fd, name, fd)
                    restored += 1
                # restored, or the layer has since got an entry of that name
                safefs.remove_at(src_fd, name)
            finally:
                os.close(fd)
        finally:
            os.close(src_fd)
    _remove_empty_dirs(attic)
    return restored


def _remove_empty_dirs(top: str) -> None:
    """Remove ``top`` and the directories below it that are empty, deepest first, each
    in its parent's fd (none reached through a symlink)."""
    for rel in reversed([rel for _, rel, _ in _walk_attic(top, None) if rel]):
        parent, _, name = rel.rpartition("/")
        fd = _open_rel(top, parent)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fd)
            os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(top)  # the store's own .aufs/attic/<id>


def _lexists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _move(src_fd: int, name: str, dst_fd: int) -> None:
    """Move ``name`` from the directory ``src_fd`` to the directory ``dst_fd``: a rename,
    or across filesystems a copy made under ``<name>~partial`` (for a housekeeping name
    still housekeeping, so no union shows it), published by rename, and then the removal
    of the source — all relative to the two fds."""
    try:
        os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = name + _PARTIAL
    safefs.remove_at(dst_fd, partial)
    _copy(src_fd, name, dst_fd, partial)
    os.rename(partial, name, src_dir_fd=dst_fd, dst_dir_fd=dst_fd)
    safefs.remove_at(src_fd, name)


def _copy(src_fd: int, name: str, dst_fd: int, dst_name: str) -> None:
    """Copy the entry ``name`` of ``src_fd`` (a whole tree if a directory, symlinks as
    symlinks) to ``dst_name`` in ``dst_fd``, with modes, owners (as root), times and
    extended attributes; no symlink followed on either side, no mount crossed."""
    st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        _copy_entry(src_fd, name, st, dst_fd, dst_name)
        return
    top = safefs.open_dir_at(src_fd, name)
    try:
        os.mkdir(dst_name, 0o700, dir_fd=dst_fd)
        dst_top = safefs.open_dir_at(dst_fd, dst_name)
        try:
            dirs: list[tuple[str, os.stat_result]] = [("", st)]
            for fd, rel, entries in walk_dirs(top):
                out = safefs.open_beneath(dst_top, rel) if rel else os.dup(dst_top)
                try:
                    _copy_xattrs(fd, out)
                    for e in entries:
                        est = e.stat(follow_symlinks=False)
                        if stat.S_ISDIR(est.st_mode):
                            os.mkdir(e.name, 0o700, dir_fd=out)  # its mode once filled
                            dirs.append((f"{rel}/{e.name}" if rel else e.name, est))
                        else:
                            _copy_entry(fd, e.name, est, out, e.name)
                finally:
                    os.close(out)
            for rel, dst in dirs:
                fd = safefs.open_beneath(dst_top, rel) if rel else os.dup(dst_top)
                try:
                    _copy_meta(fd, dst)
                finally:
                    os.close(fd)
        finally:
            os.close(dst_top)
    finally:
        os.close(top)


def _copy_entry(src_fd: int, name: str, st: os.stat_result, dst_fd: int,
                dst_name: str) -> None:
    """Copy one non-directory: a file's data, a symlink's target, a device or FIFO."""
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_fd), dst_name, dir_fd=dst_fd)
        if os.geteuid() == 0:
            os.chown(dst_name, st.st_uid, st.st_gid, dir_fd=dst_fd, follow_symlinks=False)
        os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd,
                 follow_symlinks=False)
        return
    if stat.S_ISREG(st.st_mode):
        src = os.open(name, safefs.O_FILE, dir_fd=src_fd)
        try:
            out = os.open(dst_name, safefs.O_NEW, 0o600, dir_fd=dst_fd)
            try:
                while os.sendfile(out, src, None, 1 << 20):
                    pass
                _copy_xattrs(src, out)
                _copy_meta(out, st)
            finally:
                os.close(out)
        finally:
            os.close(src)
        return
    os.mknod(dst_name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=dst_fd)
    fd = os.open(dst_name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_fd)
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != stat.S_IFMT(st.st_mode):
            raise OSError(errno.EEXIST, "replaced while being copied", dst_name)
        _copy_meta(f"/proc/self/fd/{fd}", st)  # the inode itself (an O_PATH fd's)
    finally:
        os.close(fd)


def _copy_meta(target: int | str, st: os.stat_result) -> None:
    """Give ``target`` (an open fd, or the ``/proc/self/fd`` path of one) the owner (as
    root), mode and times of ``st``."""
    if os.geteuid() == 0:
        os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_xattrs(src_fd: int, dst_fd: int) -> None:
    """The extended attributes of one open file onto another (those it may set)."""
    for attr in list_xattrs(src_fd):
        with contextlib.suppress(OSError):
            os.setxattr(dst_fd, attr, os.getxattr(src_fd, attr))
