"""What kernel AUFS tells user space about a mount, read and decided by pure functions.

Facts from the AUFS sources (sfjro/aufs-standalone, branch aufs6.1):

- ``/proc/self/mountinfo`` shows an AUFS mount's id among its super options as
  ``si=<hex>`` (``super.c`` ``aufs_show_options``); ``noplink`` there means no
  pseudo-links are kept.
- ``/sys/fs/aufs/si_<hex>/br<N>`` holds branch ``N`` as ``<path>=<perm>`` + newline, the
  path escaped like mountinfo (``\\ooo`` for control characters, space, backslash, DEL:
  ``sysfs.c`` ``sysaufs_si_br``, ``module.c`` ``au_esc_chars``). The files exist only while
  the module parameter ``brs`` (``/sys/module/aufs/parameters/brs``) is 1, the default;
  else the ``AUFS_CTL_BRINFO`` ioctl on a directory of the union gives the same list.
- ``/sys/fs/aufs/config`` (only when AUFS is a module) lists the build's
  ``CONFIG_AUFS_*``; exactly one ``CONFIG_AUFS_BRANCH_MAX_{127,511,1023,32767}`` says how
  many branches one mount can stack. Adding one more fails with ``ENOSPC``
  (``branch.c`` ``test_add``).
- A pseudo-link is a hard link ``<aufs ino>.<branch ino>`` in the writable branch's
  ``.wh..wh.plnk/`` (``plink.c`` ``plink_name``): the union inode stays linked there until
  the pseudo-links are flushed (what ``auplink MNT flush`` does, aufs-util ``plink.c``).
"""

from __future__ import annotations

import array
import fcntl
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aufs._sys import safefs
from aufs._sys.mountinfo import unescape

SYSFS = "/sys/fs/aufs"
PLINK_MAINT = "/proc/fs/aufs/plink_maint"
BRANCH_MAX_CHOICES = (127, 511, 1023, 32767)
DEFAULT_BRANCH_MAX = 127  # Kconfig's default; what Debian's and most kernels build
PLINK_DIR = ".wh..wh.plnk"

# AUFS_CTL_BRINFO = _IOW('A', AuCtl_BR = 5, union aufs_brinfo (4096 bytes))
AUFS_CTL_BRINFO = (1 << 30) | (4096 << 16) | (ord("A") << 8) | 5
_BRINFO_SIZE = 4096
_AUBRPERM_RW = 1  # AuBrPerm_RW in aufs_type.h (au_br_writable tests this bit)

_SI = re.compile(r"(?:^|,)si=([0-9a-f]+)(?:,|$)")
_BR_FILE = re.compile(r"br(\d+)")


@dataclass(frozen=True, slots=True)
class Branch:
    path: str
    perm: str  # as the kernel prints it: "rw", "ro+wh", …

    @property
    def writable(self) -> bool:
        return self.perm.split("+", 1)[0] == "rw"


def si_of(super_options: str) -> str | None:
    """The ``si=`` id in an AUFS mount's super options, or None. Pure."""
    m = _SI.search(super_options)
    return m.group(1) if m else None


def has_plinks(super_options: str) -> bool:
    """False where the mount keeps no pseudo-links (``noplink``). Pure."""
    return "noplink" not in super_options.split(",")


def parse_branch(text: str) -> Branch:
    """One ``br<N>`` file: ``<escaped path>=<perm>``. The path may hold ``=``; the
    permission never does. Pure."""
    path, sep, perm = text.rstrip("\n").rpartition("=")
    if not sep or not path:
        raise ValueError(f"not an AUFS branch line: {text!r}")
    return Branch(unescape(path), perm)


def branches_from_sysfs(files: dict[str, str]) -> list[Branch]:
    """The branches, in order, from the contents of one ``si_<id>`` directory's files
    (name -> text; ``brid<N>``, ``xi_path`` and the rest ignored). Pure."""
    numbered = {}
    for name, text in files.items():
        m = _BR_FILE.fullmatch(name)
        if m:
            numbered[int(m.group(1))] = parse_branch(text)
    if sorted(numbered) != list(range(len(numbered))):
        raise ValueError(f"AUFS branch files are not br0..brN: {sorted(numbered)}")
    return [numbered[i] for i in range(len(numbered))]


def is_exactly(found: Sequence[Branch], rw: str, lowers: Sequence[str]) -> bool:
    """True if the mounted branches are the layer's chain: ``rw`` writable, then each of
    ``lowers`` read-only, in order, nothing more or less. Pure."""
    want = [rw, *lowers]
    if [b.path.rstrip("/") for b in found] != [p.rstrip("/") for p in want]:
        return False
    return bool(found) and found[0].writable and not any(b.writable for b in found[1:])


def branch_max_from_config(text: str) -> int | None:
    """The branch limit from ``/sys/fs/aufs/config`` (``CONFIG_AUFS_BRANCH_MAX_127=y``),
    or None if it does not say. Pure."""
    found = [n for n in BRANCH_MAX_CHOICES if f"CONFIG_AUFS_BRANCH_MAX_{n}=y" in text.split()]
    return found[0] if len(found) == 1 else None


def plink_inodes(names: Iterable[str]) -> set[int]:
    """Union inode numbers from the names in ``.wh..wh.plnk/`` (``<ino>.<branch ino>``);
    anything else there is ignored. Pure."""
    out = set()
    for name in names:
        head, dot, tail = name.partition(".")
        if dot and head.isdigit() and tail.isdigit():
            out.add(int(head))
    return out


# -- readers (the only functions here that touch the system) -----------------------------

def read_branch_max(sysfs: str = SYSFS) -> int | None:
    try:
        with open(os.path.join(sysfs, "config"), encoding="ascii", errors="replace") as f:
            return branch_max_from_config(f.read())
    except OSError:
        return None  # AUFS built in: no config file


def read_branches(si: str, union_dir: str, sysfs: str = SYSFS) -> list[Branch]:
    """The branches of the mount ``si``: from sysfs, else by ``AUFS_CTL_BRINFO`` on an open
    directory of the union (``union_dir``, its root)."""
    directory = os.path.join(sysfs, f"si_{si}")
    files = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        names = []
    try:
        for name in names:
            if _BR_FILE.fullmatch(name):
                with open(os.path.join(directory, name), encoding="latin-1") as f:
                    files[name] = f.read()
    except OSError:  # EBUSY while the mount changes (sysaufs_si_show gives up), or gone
        files = {}
    if files:
        return branches_from_sysfs(files)
    return _branches_by_ioctl(union_dir)  # takes the lock the sysfs read only tries


def parse_brinfo(buf: bytes, count: int) -> list[Branch]:
    """``count`` ``union aufs_brinfo`` records (4096 bytes each: int16 id, int perm at
    offset 4, the NUL-terminated path from offset 8). Pure."""
    out = []
    for i in range(count):
        rec = buf[i * _BRINFO_SIZE:(i + 1) * _BRINFO_SIZE]
        perm = int.from_bytes(rec[4:8], "little", signed=True)
        path = os.fsdecode(rec[8:].split(b"\0", 1)[0])
        out.append(Branch(unescape(path),
                          "rw" if perm & _AUBRPERM_RW else "ro"))
    return out


def _branches_by_ioctl(union_dir: str) -> list[Branch]:
    fd = os.open(union_dir, safefs.O_ROOT)
    try:
        count = fcntl.ioctl(fd, AUFS_CTL_BRINFO, 0)  # a NULL argument: the number of branches
        buf = array.array("b", bytes(count * _BRINFO_SIZE))
        fcntl.ioctl(fd, AUFS_CTL_BRINFO, buf, True)
        return parse_brinfo(buf.tobytes(), count)
    finally:
        os.close(fd)
