"""One tar member per file: how a directory entry of a layer becomes header + data.

Shared by the layer export (a walk of ``diff/<id>``) and the export of a change list
(the naive diff). Every file is reached through its directory's fd and opened with
``O_NOFOLLOW``: a symlink swapped in while the layer is being read is archived as a
symlink, never followed out of the layer. A file that vanishes between the listing and
its turn is left out (as if it had been deleted a moment earlier).
"""

from __future__ import annotations

import errno
import os
import stat

from aufs._sys import safefs
from aufs._sys.files import NO_XATTRS, list_xattrs
from aufs.archive import tarwrite
from aufs.archive.stream import Member
from aufs.archive.tarwrite import simple_header
from aufs.whiteout import WH_OPAQUE, WH_PREFIX, is_export_xattr, opaque_xattr_listed

S_IFMT = 0o170000
S_IFREG = stat.S_IFREG
_CAP_XATTR = "security.capability"
# Never content: the host's SELinux label (Docker sets labels at mount time), and the
# private attributes of overlayfs in userxattr mode and of fuse-overlayfs.
_HOST_XATTR_PREFIXES = ("security.selinux", "user.overlay.", "user.fuseoverlayfs.")
_WH_PREFIX_B = os.fsencode(WH_PREFIX)
_WH_OPAQUE_B = os.fsencode(WH_OPAQUE)


def export_xattr(name: str) -> bool:
    return is_export_xattr(name) and not name.startswith(_HOST_XATTR_PREFIXES)


def _capability_v2(value: bytes) -> bytes:
    """Docker's rule: a VFS_CAP_REVISION_3 (namespaced) capability is written as revision 2."""
    if len(value) > 3 and value[3] == 3:
        return value[:3] + b"\x02" + value[4:20]
    return value


def read_xattrs(target: int | str, names: list[str] | None = None) -> dict[str, bytes] | None:
    """The exportable xattrs of an open fd, or of a path (not followed)."""
    if names is None:
        names = list_xattrs(target)
    out: dict[str, bytes] = {}
    for name in names:
        if not export_xattr(name):
            continue
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in NO_XATTRS:
                continue
            raise
        out[name] = _capability_v2(value) if name == _CAP_XATTR else value
    return out or None


def whiteout_name(dir_arcname: bytes, name: str) -> bytes:
    return dir_arcname + _WH_PREFIX_B + os.fsencode(name)


class Members:
    """Builds members for files found by (directory fd, name); remembers hard links."""

    def __init__(self) -> None:
        self._links: dict[tuple[int, int], bytes] = {}

    def _first_name(self, st: os.stat_result, arcname: bytes) -> bytes | None:
        """For a multiply-linked non-directory: the name it was first stored under."""
        key = (st.st_dev, st.st_ino)
        first = self._links.get(key)
        if first is None:
            self._links[key] = arcname
        return first

    def _hard_link(self, st: os.stat_result, arcname: bytes, first: bytes) -> Member:
        return (tarwrite.header(arcname, st.st_mode, st.st_uid, st.st_gid, 0, int(st.st_mtime),
                                tarwrite.LNKTYPE, first), -1, 0, False)

    def regular(self, dir_fd: int, name: str, arcname: bytes) -> Member | None:
        """A regular file (re-checked after opening). None if it vanished meanwhile."""
        try:
            fd = os.open(name, safefs.O_FILE, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # replaced by a symlink after the listing
                raise
            return self.other(dir_fd, name, arcname)
        try:
            return self.regular_fd(fd, os.fstat(fd), dir_fd, name, arcname)
        except BaseException:
            os.close(fd)
            raise

    def regular_fd(self, fd: int, st: os.stat_result, dir_fd: int, name: str,
                   arcname: bytes, names: list[str] | None = None) -> Member | None:
        """The member of the file open as ``fd`` (``st``: its fstat), found as ``name`` in
        ``dir_fd``; ``names``: its xattr names, if the caller listed them already. Takes
        ownership of ``fd``: it is in the member, or closed."""
        if st.st_mode & S_IFMT != S_IFREG:
            os.close(fd)
            return self.other(dir_fd, name, arcname, st)
        if st.st_nlink > 1:
            first = self._first_name(st, arcname)
            if first is not None:
                os.close(fd)
                return self._hard_link(st, arcname, first)
        size = st.st_size
        if names is None:
            names = list_xattrs(fd)
        if names or len(arcname) > 100:
            hdr = tarwrite.header(arcname, st.st_mode, st.st_uid, st.st_gid, size,
                                  int(st.st_mtime), tarwrite.REGTYPE,
                                  xattrs=read_xattrs(fd, names) if names else None)
        else:
            hdr = simple_header(arcname, st.st_mode, st.st_uid, st.st_gid, size,
                                int(st.st_mtime), tarwrite.REGTYPE)
        return hdr, fd, size, st.st_blocks * 512 < size

    def directory(self, dir_fd: int, name: str, arcname: bytes
                  ) -> tuple[Member, int, bool] | None:
        """A directory's member, its open fd (the caller closes it) and whether it has the
        overlay opaque xattr. None if it vanished. ``arcname`` ends with ``/``."""
        try:
            fd = os.open(name, safefs.O_DIR, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            return None  # no longer a directory: the caller lists the entry again
        try:
            st = os.fstat(fd)
            names = list_xattrs(fd)
            xattrs = read_xattrs(fd, names) if names else None
            opaque = opaque_xattr_listed(fd, names) if names else False
            if xattrs is None and len(arcname) <= 100:
                hdr = simple_header(arcname, st.st_mode, st.st_uid, st.st_gid, 0,
                                    int(st.st_mtime), tarwrite.DIRTYPE)
            else:
                hdr = tarwrite.header(arcname, st.st_mode, st.st_uid, st.st_gid, 0,
                                      int(st.st_mtime), tarwrite.DIRTYPE, xattrs=xattrs)
        except BaseException:
            os.close(fd)
            raise
        return (hdr, -1, 0, False), fd, opaque

    def other(self, dir_fd: int, name: str, arcname: bytes,
              st: os.stat_result | None = None) -> Member | None:
        """Symlink, fifo, device (sockets are left out, as Docker does). None if vanished."""
        if st is None:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
        typeflag = tarwrite.typeflag_of(st.st_mode)
        if typeflag is None:
            return None
        if typeflag == tarwrite.REGTYPE:
            return self.regular(dir_fd, name, arcname)
        if typeflag == tarwrite.DIRTYPE:
            opened = self.directory(dir_fd, name, arcname + b"/")
            if opened is None:
                return None
            os.close(opened[1])
            return opened[0]
        if st.st_nlink > 1:
            first = self._first_name(st, arcname)
            if first is not None:
                return self._hard_link(st, arcname, first)
        linkname = b""
        if typeflag == tarwrite.SYMTYPE:
            try:
                linkname = os.readlink(os.fsencode(name), dir_fd=dir_fd)
            except FileNotFoundError:
                return None
        major = minor = 0
        if typeflag in (tarwrite.CHRTYPE, tarwrite.BLKTYPE):
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        # No *at() call for xattrs: reach the entry through its directory's fd.
        xattrs = read_xattrs(safefs.proc_path(dir_fd, name))
        return (tarwrite.header(arcname, st.st_mode, st.st_uid, st.st_gid, 0, int(st.st_mtime),
                                typeflag, linkname, major, minor, xattrs), -1, 0, False)

    @staticmethod
    def whiteout(arcname: bytes, st: os.stat_result | None, mode: int = 0o600) -> Member:
        """An empty regular ``.wh.<name>`` member (``arcname`` already has the prefix)."""
        uid = gid = mtime = 0
        if st is not None:
            uid, gid, mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        return (tarwrite.header(arcname, mode, uid, gid, 0, mtime, tarwrite.REGTYPE),
                -1, 0, False)

    def opaque(self, dir_arcname: bytes, dir_fd: int) -> Member:
        """``<dir>/.wh..wh..opq`` for an opaque directory (either on-disk format)."""
        try:
            st = os.stat(WH_OPAQUE, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = os.fstat(dir_fd)  # xattr form: the marker takes the directory's owner
        return self.whiteout(dir_arcname + _WH_OPAQUE_B, st, st.st_mode & 0o777)
