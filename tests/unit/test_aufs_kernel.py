"""What the kernel AUFS engine decides from what AUFS shows (sysfs, mountinfo, the
pseudo-link directory), table-tested without an AUFS kernel. The facts come from the
aufs6.1 sources (``sysfs.c``, ``super.c``, ``branch.c``, ``plink.c``, ``fsctx.c``) and
aufs-util's ``plink.c``; an outside run on a real AUFS kernel checks them again."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from aufs._sys import fsinfo
from aufs._sys import mount as sysmount
from aufs.errors import AufsNotSupportedError
from aufs.store.layout import Layout
from aufs.union import aufs as aufs_engine
from aufs.union import aufs_plink
from aufs.union.aufs_kernel import (
    Branch,
    branch_max_from_config,
    branches_from_sysfs,
    has_plinks,
    is_exactly,
    parse_branch,
    parse_brinfo,
    plink_inodes,
    si_of,
)
from aufs.union.base import Branches, ChainTooLongError, MountSpec
from aufs.whiteout import AUFS

# A real mountinfo super-options field of Docker's mount on aufs6.1 (shape of
# aufs_show_options: si first, then what differs from the defaults).
SUPER = "rw,si=8e3a1f92c4d7b0e5,dio,dirperm1,xino=/dev/shm/aufs.xino"


@pytest.mark.parametrize(("options", "si"), [
    (SUPER, "8e3a1f92c4d7b0e5"),
    ("rw,si=1f", "1f"),
    ("rw,dio", None),
    ("rw,xsi=12", None),
])
def test_si_of(options: str, si: str | None) -> None:
    assert si_of(options) == si


@pytest.mark.parametrize(("options", "plinks"), [
    (SUPER, True), ("rw,si=1,noplink", False), ("rw,si=1,plink", True)])
def test_has_plinks(options: str, plinks: bool) -> None:
    assert has_plinks(options) is plinks


@pytest.mark.parametrize(("text", "branch"), [
    ("/var/lib/docker/aufs/diff/abc=rw\n", Branch("/var/lib/docker/aufs/diff/abc", "rw")),
    ("/s/diff/x=ro+wh\n", Branch("/s/diff/x", "ro+wh")),
    ("/s/a\\040b=ro+wh\n", Branch("/s/a b", "ro+wh")),          # seq_path escapes a space
    ("/s/a=b=rw\n", Branch("/s/a=b", "rw")),                     # the perm is after the last =
    ("/s/a\\134b=ro\n", Branch("/s/a\\b", "ro")),                # and a backslash
])
def test_parse_branch(text: str, branch: Branch) -> None:
    assert parse_branch(text) == branch


@pytest.mark.parametrize("text", ["", "=rw\n", "/no/perm\n"])
def test_parse_branch_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_branch(text)


def _sysfs(paths: list[str]) -> dict[str, str]:
    files = {"xi_path": "/dev/shm/aufs.xino\n"}
    for i, p in enumerate(paths):
        files[f"br{i}"] = f"{p}={'rw' if i == 0 else 'ro+wh'}\n"
        files[f"brid{i}"] = f"{64 + i}\n"
    return files


def test_branches_from_sysfs_in_numeric_order() -> None:
    paths = [f"/s/diff/{i}" for i in range(12)]  # br10 sorts before br2 as text
    assert [b.path for b in branches_from_sysfs(_sysfs(paths))] == paths


def test_branches_from_sysfs_refuses_a_gap() -> None:
    files = _sysfs(["/a", "/b", "/c"])
    del files["br1"]
    with pytest.raises(ValueError):
        branches_from_sysfs(files)


CHAIN = [f"/s/diff/l{i:03d}" for i in range(126)]  # parents, nearest first
RW = "/s/diff/top"


def _found(paths: list[str]) -> list[Branch]:
    return branches_from_sysfs(_sysfs(paths))


@pytest.mark.parametrize(("found", "whole"), [
    (_found([RW, *CHAIN]), True),
    (_found([RW, *CHAIN[:57]]), False),                  # killed after the 58th branch
    (_found([RW, *CHAIN[:97]]), False),                  # … or the 98th
    (_found([RW]), False),                               # the first mount only
    (_found([RW, *CHAIN, "/s/diff/extra"]), False),
    (_found([RW, *reversed(CHAIN)]), False),             # same set, wrong order
    (_found(["/s/diff/other", *CHAIN]), False),          # another layer's union
    ([Branch(RW, "ro+wh"), *(Branch(p, "ro+wh") for p in CHAIN)], False),  # no rw branch
    ([Branch(RW, "rw"), Branch(CHAIN[0], "rw"), *(Branch(p, "ro+wh") for p in CHAIN[1:])],
     False),                                             # a parent writable
    ([Branch(RW + "/", "rw"), *(Branch(p, "ro+wh") for p in CHAIN)], True),
    ([], False),
])
def test_is_exactly(found: list[Branch], whole: bool) -> None:
    assert is_exactly(found, RW, CHAIN) is whole


CONFIG = ("CONFIG_AUFS_FS=m\nCONFIG_AUFS_BRANCH_MAX_{}=y\nCONFIG_AUFS_SBILIST=y\n"
          "CONFIG_AUFS_XATTR=y\n")


@pytest.mark.parametrize(("text", "limit"), [
    (CONFIG.format(127), 127),
    (CONFIG.format(511), 511),
    (CONFIG.format(1023), 1023),
    (CONFIG.format(32767), 32767),
    ("CONFIG_AUFS_FS=m\n", None),                       # says nothing
    ("CONFIG_AUFS_BRANCH_MAX_1270=y\n", None),
    (CONFIG.format(127) + "CONFIG_AUFS_BRANCH_MAX_511=y\n", None),  # contradicts itself
])
def test_branch_max_from_config(text: str, limit: int | None) -> None:
    assert branch_max_from_config(text) == limit


@pytest.mark.parametrize(("names", "inodes"), [
    (["1234.5678", "99.100"], {1234, 99}),
    ([], set()),
    (["1234", "x.5", "12.y", ".wh.tmp"], set()),        # not pseudo-link names
])
def test_plink_inodes(names: list[str], inodes: set[int]) -> None:
    assert plink_inodes(names) == inodes


def _brinfo(rows: list[tuple[int, int, bytes]]) -> bytes:
    out = b""
    for brid, perm, path in rows:
        rec = struct.pack("<hxxi", brid, perm) + path + b"\0"
        out += rec.ljust(4096, b"\0")
    return out


def test_parse_brinfo() -> None:
    # AuBrPerm_RW = 1, AuBrPerm_RO = 2, AuBrRAttr_WH = 1 << 7 (ro+wh).
    buf = _brinfo([(64, 1, b"/s/diff/top"), (65, 2 | 1 << 7, b"/s/diff/a\\040b")])
    assert parse_brinfo(buf, 2) == [Branch("/s/diff/top", "rw"), Branch("/s/diff/a b", "ro")]


# -- building and refusing a chain ------------------------------------------------------------

def _lowers(n: int) -> list[str]:
    return [f"/var/lib/docker/aufs/diff/{i:064x}" for i in range(n)]


@pytest.mark.parametrize("root", ["/var/lib/docker/aufs", "/srv/a=rw/b=ro+wh"])
@pytest.mark.parametrize("n", [0, 1, 40, 126, 200])
def test_branch_count_adds_up_over_the_specs(n: int, root: str) -> None:
    lowers = [p.replace("/var/lib/docker/aufs", root) for p in _lowers(n)]
    specs = aufs_engine.aufs_specs("/m", f"{root}/diff/rw", lowers)
    assert sum(aufs_engine.branch_count(s) for s in specs) == n + 1
    assert len(specs) > 1 or n < 41  # long chains do use append: remounts (41+ here)


@pytest.mark.parametrize(("lowers", "limit", "refused"), [
    (126, 127, False), (127, 127, True), (510, 511, False), (511, 511, True),
    (5000, None, False),  # the limit is not known: the kernel's ENOSPC will tell
])
def test_check_chain(lowers: int, limit: int | None, refused: bool) -> None:
    if refused:
        with pytest.raises(ChainTooLongError, match=f"at most {limit} branches"):
            aufs_engine.check_chain(lowers, limit)
    else:
        aufs_engine.check_chain(lowers, limit)


class _Kernel:
    """Stands in for mount(2) on an AUFS kernel that stacks ``limit`` branches."""

    def __init__(self, limit: int) -> None:
        self.limit, self.branches, self.unmounted = limit, 0, False

    def run(self, spec: MountSpec) -> None:
        added = aufs_engine.branch_count(spec)
        if self.branches + added > self.limit:
            raise sysmount.MountError(errno.ENOSPC, "No space left on device", spec)
        self.branches += added

    def unmount(self, target: str, auplink: str | None = None) -> None:
        self.unmounted, self.branches = True, 0


@pytest.mark.parametrize(("limit", "known"), [(127, None), (127, 127), (511, None)])
def test_a_chain_over_the_limit_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                     limit: int, known: int | None) -> None:
    kernel = _Kernel(limit)
    monkeypatch.setattr(sysmount, "run", kernel.run)
    monkeypatch.setattr(aufs_engine, "unmount", kernel.unmount)
    engine = aufs_engine.AufsEngine(layout=None,  # type: ignore[arg-type]
                                    caps=aufs_engine.AufsCaps(dirperm1=True, auplink=None,
                                                              branch_max=known))
    b = Branches(target="/m", rw="/var/lib/docker/aufs/diff/rw", lowers=tuple(_lowers(limit)))
    with pytest.raises(ChainTooLongError, match=f"at most {limit} branches") as info:
        engine.mount(b)
    assert str(limit) in str(info.value) and str(limit) + " parent layers" in str(info.value)
    if known is None:   # found by building: what was built is gone again
        assert kernel.unmounted and kernel.branches == 0
    else:               # refused before anything was mounted
        assert not kernel.unmounted and kernel.branches == 0
    engine.mount(Branches(target="/m", rw=b.rw, lowers=b.lowers[:-1]))  # one less fits
    assert kernel.branches == limit


def test_an_interrupt_between_appends_leaves_no_half_stack(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or any non-OSError) after the first spec mounted: the partial union goes."""
    kernel = _Kernel(1000)
    calls = 0

    def run(spec: MountSpec) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        kernel.run(spec)

    monkeypatch.setattr(sysmount, "run", run)
    monkeypatch.setattr(aufs_engine, "unmount", kernel.unmount)
    engine = aufs_engine.AufsEngine(layout=None,  # type: ignore[arg-type]
                                    caps=aufs_engine.AufsCaps(dirperm1=True, auplink=None))
    with pytest.raises(KeyboardInterrupt):
        engine.mount(Branches(target="/m", rw="/r", lowers=tuple(_lowers(200))))
    assert kernel.unmounted and kernel.branches == 0


def test_other_mount_errors_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(spec: MountSpec) -> None:
        raise sysmount.MountError(errno.EINVAL, "Invalid argument", spec)

    monkeypatch.setattr(sysmount, "run", refuse)
    monkeypatch.setattr(aufs_engine, "unmount", lambda target, auplink=None: None)
    engine = aufs_engine.AufsEngine(layout=None,  # type: ignore[arg-type]
                                    caps=aufs_engine.AufsCaps(dirperm1=False, auplink=None))
    with pytest.raises(sysmount.MountError) as info:
        engine.mount(Branches(target="/m", rw="/r", lowers=("/l",)))
    assert not isinstance(info.value, ChainTooLongError)


# -- pseudo-link flush ----------------------------------------------------------------------

@pytest.mark.parametrize(("auplink", "maint", "method"), [
    ("/sbin/auplink", True, aufs_plink.Flush.AUPLINK),
    ("/sbin/auplink", False, aufs_plink.Flush.AUPLINK),
    (None, True, aufs_plink.Flush.MAINT),
    (None, False, aufs_plink.Flush.REMOUNT),
])
def test_flush_method(auplink: str | None, maint: bool, method: aufs_plink.Flush) -> None:
    assert aufs_plink.flush_method(auplink, maint) is method


def test_clean_specs() -> None:
    assert [str(s) for s in aufs_plink.clean_specs("/m")] == [
        "mount -t aufs none /m -o noplink flags=0x20", "mount -t aufs none /m -o plink flags=0x20"]


@pytest.mark.parametrize(("entries", "names"), [
    ([("a", 12, False), ("b", 12, False), ("c", 13, False)], ["a", "b"]),
    ([("d", 12, True)], []),                             # a directory is never copied up
    ([("l", 14, False)], ["l"]),                         # a symlink is (lchown)
    ([], []),
])
def test_copy_up_names(entries: list[tuple[str, int, bool]], names: list[str]) -> None:
    assert aufs_plink.copy_up_names(entries, {12, 14}) == names


def _union_and_branches(tmp_path: Path) -> tuple[Path, Path, Path, list[Branch]]:
    """A directory standing for the union, with a file whose inode has a pseudo-link in
    the rw branch (the flush's decisions are what is tested: no AUFS here)."""
    union, rw, ro = tmp_path / "union", tmp_path / "rw", tmp_path / "ro"
    for d in (union / "sub", rw / ".wh..wh.plnk", ro / ".wh..wh.plnk"):
        d.mkdir(parents=True)
    for name in ("linked", "sub/other-name", "plain"):
        (union / name).write_text(name)
    (union / "sub" / "link").symlink_to("../linked")
    linked = (union / "linked").stat().st_ino
    (rw / ".wh..wh.plnk" / f"{linked}.777").write_text("")
    (ro / ".wh..wh.plnk" / f"{(union / 'plain').stat().st_ino}.1").write_text("")  # ro: ignored
    return union, rw, ro, [Branch(str(rw), "rw"), Branch(str(ro), "ro+wh")]


def _ctimes(union: Path) -> dict[str, int]:
    return {str(p.relative_to(union)): p.lstat().st_ctime_ns for p in union.rglob("*")
            if not p.is_dir()}


@pytest.mark.parametrize("with_maint", [True, False])
def test_flush_copies_up_cleans_and_unlinks(tmp_path: Path, with_maint: bool) -> None:
    union, rw, ro, branches = _union_and_branches(tmp_path)
    before = _ctimes(union)
    maint = tmp_path / "plink_maint"  # a file standing for /proc/fs/aufs/plink_maint
    if with_maint:
        maint.write_text("")
    remounts: list[str] = []
    os.utime(union / "linked", ns=(1, 1))  # any later lchown shows in the ctime
    before = _ctimes(union)
    used = aufs_plink.flush_branches(str(union), "8e3a", branches, maint=str(maint),
                                     remount=lambda spec: remounts.append(str(spec)))
    after = _ctimes(union)
    assert [n for n in before if after[n] != before[n]] == ["linked"]
    assert os.listdir(rw / ".wh..wh.plnk") == []        # the pseudo-link files are gone
    assert len(os.listdir(ro / ".wh..wh.plnk")) == 1    # a read-only branch is not ours
    if with_maint:
        assert used is aufs_plink.Flush.MAINT
        assert maint.read_text() == "si=8e3aclean" and remounts == []
    else:
        assert used is aufs_plink.Flush.REMOUNT
        assert [s.split(" -o ")[1] for s in remounts] == ["noplink flags=0x20",
                                                          "plink flags=0x20"]


def test_flush_with_no_pseudo_link_cleans_nothing(tmp_path: Path) -> None:
    union, rw, _, branches = _union_and_branches(tmp_path)
    for f in os.listdir(rw / ".wh..wh.plnk"):
        os.unlink(rw / ".wh..wh.plnk" / f)
    maint = tmp_path / "plink_maint"
    maint.write_text("")
    before = _ctimes(union)
    remounts: list[MountSpec] = []
    aufs_plink.flush_branches(str(union), "1", branches, maint=str(maint),
                              remount=remounts.append)
    assert maint.read_text() == "si=1" and _ctimes(union) == before
    aufs_plink.flush_branches(str(union), "1", branches, maint=str(tmp_path / "none"),
                              remount=remounts.append)
    assert remounts == []


def test_status_says_which_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    def rows(auplink: str | None, maint: bool, limit: int | None) -> dict[str, str]:
        caps = aufs_engine.AufsCaps(dirperm1=True, auplink=auplink, plink_maint=maint,
                                    branch_max=limit)
        return dict(aufs_engine.AufsEngine(None, caps).describe())  # type: ignore[arg-type]

    assert rows(None, True, 127) == {
        "auplink": "not found", "Pseudo-link Flush": "built in (/proc/fs/aufs/plink_maint)",
        "Branch Limit": "127"}
    assert rows("/sbin/auplink", True, None)["Pseudo-link Flush"] == "auplink"
    assert rows(None, False, None)["Pseudo-link Flush"] == "built in (remount noplink,plink)"


def test_read_branches_from_a_sysfs_directory(tmp_path: Path) -> None:
    """The reader over a directory laid out as /sys/fs/aufs (br10 after br9, brid and
    xi_path ignored); an unreadable one falls back to the ioctl, which a plain directory
    refuses."""
    from aufs.union.aufs_kernel import read_branch_max, read_branches

    si = tmp_path / "si_8e3a"
    si.mkdir()
    paths = [f"/s/diff/{i}" for i in range(12)]
    for name, text in _sysfs(paths).items():
        (si / name).write_text(text)
    (tmp_path / "config").write_text(CONFIG.format(511))
    assert [b.path for b in read_branches("8e3a", str(tmp_path), str(tmp_path))] == paths
    assert read_branch_max(str(tmp_path)) == 511
    assert read_branch_max(str(tmp_path / "none")) is None  # AUFS built in: no config file
    with pytest.raises(OSError):  # no sysfs entry, and the ioctl is not AUFS's here
        read_branches("ffff", str(tmp_path), str(tmp_path))


def _fake_auplink(tmp_path: Path, codes: list[int]) -> tuple[str, Path]:
    """An ``auplink`` that exits with ``codes`` in turn (then 0), logging its arguments."""
    log = tmp_path / "calls"
    script = tmp_path / "auplink"
    cases = "".join(f"  {i}) exit {c};;\n" for i, c in enumerate(codes, 1))
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\nn=$(wc -l < {log})\n'
                      f'case $n in\n{cases}esac\nexit 0\n')
    script.chmod(0o755)
    return str(script), log


@pytest.mark.parametrize(("codes", "calls", "rc"), [
    ([], 1, 0),
    ([errno.EINVAL, errno.EINVAL], 3, 0),          # not in the mount table yet: again
    ([errno.EINVAL] * 9, 6, errno.EINVAL),         # Docker's 5 retries, then on to umount
    ([1, errno.EINVAL], 1, 1),                     # any other failure: no retry
])
def test_auplink_is_retried_on_einval_as_docker(tmp_path: Path, codes: list[int], calls: int,
                                                rc: int) -> None:
    auplink, log = _fake_auplink(tmp_path, codes)
    assert aufs_plink.run_auplink(auplink, "/s/mnt/x") == rc
    assert log.read_text().splitlines() == ["/s/mnt/x flush"] * calls


@pytest.mark.parametrize(("uid_map", "nested"), [
    ("         0          0 4294967295\n", False),     # the initial namespace
    ("0 0 4294967295", False),
    ("", False),                                        # no mapping read: as Docker
    ("         0     100000      65536\n", True),      # rootless / userns-remap
    ("0 0 4294967294\n", True),
    ("         0       1000          1\n         1     100000  65536\n", True),
])
def test_in_user_namespace(uid_map: str, nested: bool) -> None:
    assert aufs_engine.in_user_namespace(uid_map) is nested


def test_probe_refuses_a_user_namespace_as_docker(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's AUFS shows in /proc/filesystems, but no mount of it can work inside a
    user namespace: the probe says so (and auto goes on) before mounting anything."""
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0     100000      65536\n")
    monkeypatch.setattr(aufs_engine, "supports_aufs", lambda: True)
    monkeypatch.setattr(aufs_engine, "UID_MAP", str(uid_map))
    layout = Layout.at(str(tmp_path / "store"))
    with pytest.raises(AufsNotSupportedError,
                       match=r"^AUFS cannot be used in non-init user namespace$"):
        aufs_engine.probe(layout, 0xEF53, AUFS)
    assert not (tmp_path / "store").exists()  # no probe mount was tried


@pytest.mark.parametrize(("magic", "name"), [
    (0xEF53, "extfs"), (0x58465342, "xfs"), (0x01021994, "tmpfs"), (0x9123683E, "btrfs"),
    (0x794C7630, "overlayfs"), (0x2FC12FC1, "zfs"), (0x6969, "nfs"), (0x47504653, "gpfs"),
    (0x65735546, "fuse"), (0xF15F, "ecryptfs"), (0x61756673, "aufs"), (0x12345678, "<unknown>"),
])
def test_backing_filesystem_names_are_dockers(magic: int, name: str) -> None:
    """``Backing Filesystem`` of status: Docker's graphdriver FsNames (20.10)."""
    assert fsinfo.fs_name(magic) == name
