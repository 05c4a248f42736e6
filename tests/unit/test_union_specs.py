"""Mount specs are data: built by pure functions, checked here byte for byte without mounting."""

from __future__ import annotations

import hashlib
import os

import pytest

import aufs
from aufs._sys.mount import MS_REMOUNT
from aufs.graphdriver import DriverError
from aufs.union.aufs import XINO, aufs_specs, format_mount_label
from aufs.union.base import (
    Branches,
    ChainTooLongError,
    MountMethod,
    MountSpec,
    escape_overlay_path,
    joined_length,
)
from aufs.union.fuse_overlayfs import FuseCaps, fuse_specs
from aufs.union.overlay import (
    MAX_LOWERS,
    NeedsShortNamesError,
    OverlayCaps,
    needs_short_names,
    overlay_specs,
    short_name,
)

MCS = "system_u:object_r:svirt_sandbox_file_t:s0:c1,c2"

# -- kernel AUFS: Docker's aufsMount ------------------------------------------------------


def test_ms_remount_is_the_kernel_flag() -> None:
    assert aufs.MS_REMOUNT == MS_REMOUNT == 32


@pytest.mark.parametrize(
    ("src", "label", "expected"),
    [
        ("", "", ""),
        ("a=b", "", "a=b"),
        ("", MCS, f'context="{MCS}"'),
        ("append:/x=ro+wh", "l", 'append:/x=ro+wh,context="l"'),
    ],
)
def test_format_mount_label(src: str, label: str, expected: str) -> None:
    assert format_mount_label(src, label) == expected


@pytest.mark.parametrize(
    ("lowers", "label", "dirperm1", "data"),
    [
        ([], "", False, "br:/s/diff/1=rw,dio,xino=/dev/shm/aufs.xino"),
        (["/s/diff/2", "/s/diff/1"], "", False,
         "br:/s/diff/3=rw:/s/diff/2=ro+wh:/s/diff/1=ro+wh,dio,xino=/dev/shm/aufs.xino"),
        (["/s/diff/2", "/s/diff/1"], "", True,
         "br:/s/diff/3=rw:/s/diff/2=ro+wh:/s/diff/1=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1"),
        (["/s/diff/1"], MCS, True,
         f'br:/s/diff/3=rw:/s/diff/1=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1,context="{MCS}"'),
    ],
)
def test_aufs_first_mount_exact_string(lowers: list[str], label: str, dirperm1: bool,
                                       data: str) -> None:
    rw = "/s/diff/1" if not lowers else "/s/diff/3"
    (spec,) = aufs_specs("/s/mnt/3", rw, lowers, label, dirperm1=dirperm1)
    assert (spec.fstype, spec.source, spec.target, spec.flags) == ("aufs", "none", "/s/mnt/3", 0)
    assert spec.method is MountMethod.MOUNT
    assert spec.data == data
    assert XINO == "/dev/shm/aufs.xino"


def _room(label: str = "", dirperm1: bool = False, page: int = 4096) -> int:
    """Docker's buffer for the br: list: a page less the label and 54 (+8 for dirperm1)."""
    return page - len(label) - 54 - (len("dirperm1") if dirperm1 else 0)


def _lowers_filling(room: int, rw: str, slack: int) -> list[str]:
    """Lower dirs whose br: list is exactly ``room`` bytes long, plus ``slack``."""
    first = f"br:{rw}=rw"
    lowers = [f"/l{i:04d}" for i in range((room - len(first)) // 13 - 1)]  # ":/lNNNN=ro+wh"
    used = len(first) + 13 * len(lowers)
    last_len = room - used - len(":=ro+wh") + slack
    return [*lowers, "/" + "x" * (last_len - 1)]


@pytest.mark.parametrize("page", [4096, 16384])
@pytest.mark.parametrize("dirperm1", [False, True])
@pytest.mark.parametrize("label", ["", MCS])
def test_aufs_page_boundary_exact_fit(page: int, dirperm1: bool, label: str) -> None:
    room = _room(label, dirperm1, page)
    lowers = _lowers_filling(room, "/rw", 0)
    (spec,) = aufs_specs("/t", "/rw", lowers, label, dirperm1=dirperm1, page_size=page)
    head = spec.data.split(",dio,")[0]
    assert len(head) == room
    assert head == "br:/rw=rw" + "".join(f":{lo}=ro+wh" for lo in lowers)
    assert len(spec.data) < page


@pytest.mark.parametrize("page", [4096, 16384])
@pytest.mark.parametrize("dirperm1", [False, True])
@pytest.mark.parametrize("label", ["", MCS])
def test_aufs_page_boundary_one_byte_over(page: int, dirperm1: bool, label: str) -> None:
    room = _room(label, dirperm1, page)
    lowers = _lowers_filling(room, "/rw", 1)
    first, append = aufs_specs("/t", "/rw", lowers, label, dirperm1=dirperm1, page_size=page)
    assert first.data.split(",dio,")[0] == "br:/rw=rw" + "".join(
        f":{lo}=ro+wh" for lo in lowers[:-1])
    assert (append.fstype, append.source, append.target) == ("aufs", "none", "/t")
    assert append.flags == MS_REMOUNT
    assert append.data == format_mount_label(f"append:{lowers[-1]}=ro+wh", label)


def test_aufs_appends_carry_the_label() -> None:
    lowers = [f"/{'d' * 200}/{i}" for i in range(30)]
    specs = aufs_specs("/t", "/rw", lowers, "lbl")
    assert len(specs) > 1
    for spec, lower in zip(specs[1:], lowers[-(len(specs) - 1):], strict=True):
        assert spec.data == f'append:{lower}=ro+wh,context="lbl"'
        assert spec.flags == MS_REMOUNT


def _branches_in_order(specs: list[MountSpec]) -> list[str]:
    """Every ro branch named by the mount and its remounts, in the order they are added."""
    head = specs[0].data.split(",dio,")[0]
    out = [b.removesuffix("=ro+wh") for b in head.split(":")[2:]]
    out += [s.data.removeprefix("append:").removesuffix("=ro+wh") for s in specs[1:]]
    return out


def _hash(c: str) -> str:
    return hashlib.sha256(c.encode()).hexdigest()


def _docker_matching_path(tmp_outer: str) -> str:
    """TestMountMoreThan42LayersMatchingPathLength's search, literally."""
    zeroes = "0"
    while True:
        mount_path = os.path.join(tmp_outer, zeroes, "aufs")
        path_length = 77 + len(mount_path)
        mod = 4095 % path_length
        if mod == 0 or mod > path_length - 2:
            return mount_path
        zeroes += "0"


@pytest.mark.parametrize("tmp_outer", ["/tmp/aufs-tests", "/var/tmp/aufs-tests",
                                       "/tmp/pytest-of-root/pytest-1/test0/aufs-tests"])
def test_aufs_126_layers_docker_matching_path_length(tmp_outer: str) -> None:
    """Docker's 126-layer chain at a root where the 4096th byte of the full br: list
    falls inside a path or an ``=ro+wh`` section, never on a separator."""
    root = _docker_matching_path(tmp_outer)
    ids = [_hash(str(i)) for i in range(1, 127)]
    rw = f"{root}/diff/{ids[-1]}"
    lowers = [f"{root}/diff/{i}" for i in reversed(ids[:-1])]  # nearest first
    full = f"br:{rw}=rw" + "".join(f":{lo}=ro+wh" for lo in lowers)
    assert full[4095] != ":"  # the boundary Docker's test aims at
    specs = aufs_specs(f"{root}/mnt/{ids[-1]}", rw, lowers)
    assert _branches_in_order(specs) == lowers  # none lost, none twice, none cut
    assert all(len(s.data) < 4096 for s in specs)
    assert all(s.flags == MS_REMOUNT for s in specs[1:]) and specs[0].flags == 0
    head = specs[0].data.split(",dio,")[0]
    packed = len(head.split(":")) - 2
    assert len(head) <= _room() < len(head) + len(f":{lowers[packed]}=ro+wh")


def test_aufs_long_chain_packs_then_appends_in_order() -> None:
    lowers = [f"/var/lib/docker/aufs/diff/{i:064d}" for i in range(126)]
    specs = aufs_specs("/t", "/rw", lowers)
    assert _branches_in_order(specs) == lowers
    packed = len(specs[0].data.split(",dio,")[0].split(":")) - 2
    assert 0 < packed < 126 and len(specs) == 1 + 126 - packed


@pytest.mark.parametrize("label", ["", MCS, "system_u:object_r:étiquette_t:s0"])
@pytest.mark.parametrize("root", ["/var/lib/dökker/aufs", "/srv/\u30c9\u30c3\u30ab\u30fc",
                                  os.fsdecode(b"/srv/\xff\xfe")])
def test_aufs_page_split_counts_bytes(root: str, label: str) -> None:
    """Go's ``len`` and the kernel's page count bytes: a root or label outside ASCII must
    not push the first mount's data past the page (the kernel would cut the last path)."""
    lowers = [f"{root}/diff/{i:064x}" for i in range(126)]
    rw = f"{root}/diff/{'f' * 64}"
    specs = aufs_specs(f"{root}/mnt/x", rw, lowers, label, dirperm1=True)
    room = 4096 - len(os.fsencode(label)) - 54 - len("dirperm1")
    head = specs[0].data.split(",dio,")[0]
    packed = len(head.split(":")) - 2
    assert len(os.fsencode(head)) <= room < len(os.fsencode(head + f":{lowers[packed]}=ro+wh"))
    assert all(len(os.fsencode(s.data)) < 4096 for s in specs)
    appended = [s.data.split(",")[0].removeprefix("append:").removesuffix("=ro+wh")
                for s in specs[1:]]
    assert [b.removesuffix("=ro+wh") for b in head.split(":")[2:]] + appended == lowers


# -- kernel overlayfs -----------------------------------------------------------------------


def _b(n: int, label: str = "", root: str = "/r") -> Branches:
    return Branches(target=f"{root}/mnt/x", rw=f"{root}/diff/x",
                    lowers=tuple(f"{root}/diff/{i}" for i in range(n)),
                    work=f"{root}/.aufs/work/x", label=label)


def test_overlay_mount2_exact_string() -> None:
    caps = OverlayCaps(new_api=False, extra_options=("index=off", "redirect_dir=off"))
    (spec,) = overlay_specs(_b(2), caps)
    assert spec.method is MountMethod.MOUNT and spec.cwd is None
    assert (spec.fstype, spec.source, spec.target, spec.flags) == (
        "overlay", "overlay", "/r/mnt/x", 0)
    assert spec.data == ("lowerdir=/r/diff/0:/r/diff/1,upperdir=/r/diff/x,"
                         "workdir=/r/.aufs/work/x,index=off,redirect_dir=off")


def test_overlay_mount2_label_is_quoted() -> None:
    (spec,) = overlay_specs(_b(1, MCS), OverlayCaps(new_api=False, extra_options=()))
    assert spec.data.endswith(f',context="{MCS}"')


def test_overlay_mount2_escapes_separators() -> None:
    (spec,) = overlay_specs(_b(1, root="/a,b:c"), OverlayCaps(new_api=False, extra_options=()))
    assert spec.options[0] == "lowerdir=/a\\,b\\:c/diff/0"
    assert spec.options[1] == "upperdir=/a\\,b\\:c/diff/x"


def test_overlay_new_api_one_option_per_lower() -> None:
    caps = OverlayCaps(new_api=True, extra_options=("index=off",))
    (spec,) = overlay_specs(_b(300, label=MCS, root="/a,b:c"), caps)
    assert spec.method is MountMethod.FSCONFIG
    assert spec.options[:2] == ("lowerdir+=/a,b:c/diff/0", "lowerdir+=/a,b:c/diff/1")
    assert len(spec.options) == 300 + 4
    # fsconfig takes each value whole: no escapes, and no quotes around the context
    # (the kernel strips those only when it splits mount(2) data).
    assert spec.options[-4:] == ("upperdir=/a,b:c/diff/x", "workdir=/a,b:c/.aufs/work/x",
                                 "index=off", f"context={MCS}")


def test_overlay_new_api_never_needs_short_names() -> None:
    assert not needs_short_names(_b(MAX_LOWERS), OverlayCaps(new_api=True, extra_options=()))


def test_overlay_refuses_more_than_500_lowers() -> None:
    for new_api in (True, False):
        with pytest.raises(ChainTooLongError, match="500") as info:
            overlay_specs(_b(MAX_LOWERS + 1), OverlayCaps(new_api=new_api, extra_options=()))
        assert isinstance(info.value, DriverError) and isinstance(info.value, ValueError)


def _lowers_of_length(total: int) -> Branches:
    """Branches whose mount(2) option string is exactly ``total`` bytes long."""
    b = _b(1)
    base = joined_length(overlay_specs(b, OverlayCaps(new_api=False, extra_options=(),
                                                      page_size=1 << 20))[0].options)
    pad = total - base
    return Branches(target=b.target, rw=b.rw, lowers=(b.lowers[0] + "x" * pad,), work=b.work)


def test_overlay_page_boundary() -> None:
    caps = OverlayCaps(new_api=False, extra_options=())
    fits = _lowers_of_length(4095)  # plus the NUL: exactly one page
    (spec,) = overlay_specs(fits, caps)
    assert len(spec.data) == 4095 and spec.cwd is None
    over = _lowers_of_length(4096)
    assert needs_short_names(over, caps) and not needs_short_names(fits, caps)
    with pytest.raises(NeedsShortNamesError, match="short link"):
        overlay_specs(over, caps)


def test_overlay_over_a_page_mounts_short_names_relative_to_the_links_dir() -> None:
    caps = OverlayCaps(new_api=False, extra_options=("index=off",))
    b = _b(MAX_LOWERS)
    assert needs_short_names(b, caps)
    names = [short_name(p) for p in b.lowers]
    (spec,) = overlay_specs(b, caps, "/r/.aufs/l", names)
    assert spec.method is MountMethod.MOUNT and spec.cwd == "/r/.aufs/l"
    assert spec.options == (f"lowerdir={':'.join(names)}", "upperdir=../../diff/x",
                            "workdir=../work/x", "index=off")
    assert len(spec.data) < 4096


def test_overlay_short_names_too_long_even_so() -> None:
    caps = OverlayCaps(new_api=False, extra_options=())
    b = _b(MAX_LOWERS)
    with pytest.raises(ChainTooLongError, match="even with short links"):
        overlay_specs(b, caps, "/r/.aufs/l", [short_name(p, 32) for p in b.lowers])


def test_short_name_is_stable_hex() -> None:
    assert short_name("/r/diff/a") == short_name("/r/diff/a")
    assert short_name("/r/diff/a") != short_name("/r/diff/b")
    assert len(short_name("/r/diff/a")) == 6 and len(short_name("/r/diff/a", 10)) == 10
    assert short_name("/r/diff/a", 10).startswith(short_name("/r/diff/a"))
    int(short_name("/r/diff/a", 32), 16)


@pytest.mark.parametrize(("raw", "escaped"), [("/a/b", "/a/b"), ("/a:b", "/a\\:b"),
                                               ("/a,b", "/a\\,b"), ("/a\\b", "/a\\\\b")])
def test_escape_overlay_path(raw: str, escaped: str) -> None:
    assert escape_overlay_path(raw) == escaped


# -- fuse-overlayfs ---------------------------------------------------------------------------

CAPS = FuseCaps(binary="/usr/bin/fuse-overlayfs", fusermount=None, as_root=True)


def test_fuse_argv_exact() -> None:
    (spec,) = fuse_specs(_b(2), CAPS)
    assert spec.method is MountMethod.HELPER
    assert spec.argv == ("/usr/bin/fuse-overlayfs", "-f", "-o",
                         "lowerdir=/r/diff/0:/r/diff/1,upperdir=/r/diff/x,"
                         "workdir=/r/.aufs/work/x", "/r/mnt/x")
    assert (spec.fstype, spec.target) == ("fuse.fuse-overlayfs", "/r/mnt/x")
    assert str(spec) == " ".join(spec.argv)


def test_fuse_label_and_escapes() -> None:
    (spec,) = fuse_specs(_b(1, label=MCS, root="/a,b"), CAPS)
    assert spec.argv[3] == ("lowerdir=/a\\,b/diff/0,upperdir=/a\\,b/diff/x,"
                            "workdir=/a\\,b/.aufs/work/x,"
                            'context="system_u:object_r:svirt_sandbox_file_t:s0:c1\\,c2"')


def test_fuse_has_no_page_limit() -> None:
    (spec,) = fuse_specs(_b(MAX_LOWERS), CAPS)
    assert len(spec.argv[3]) > 4096


# -- MountSpec ---------------------------------------------------------------------------------


def test_spec_prints_what_would_be_run() -> None:
    spec = MountSpec("aufs", "none", "/t", ("append:/x=ro+wh",), flags=MS_REMOUNT)
    assert str(spec) == "mount -t aufs none /t -o append:/x=ro+wh flags=0x20"
    rel = MountSpec("overlay", "overlay", "/t", ("lowerdir=a:b",), cwd="/r/.aufs/l")
    assert str(rel) == "mount -t overlay overlay /t -o lowerdir=a:b (in /r/.aufs/l)"


def test_spec_shortens_huge_options_when_printed() -> None:
    (spec,) = overlay_specs(_b(MAX_LOWERS), OverlayCaps(new_api=True, extra_options=()))
    text = str(spec)
    assert text.startswith("fsconfig -t overlay overlay /r/mnt/x -o lowerdir+=/r/diff/0,")
    assert f"({len(spec.data)} bytes)" in text and len(text) < 400


def test_specs_are_frozen() -> None:
    spec = MountSpec("overlay", "overlay", "/t")
    with pytest.raises(AttributeError):
        spec.target = "/elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize("label", ["", MCS])
def test_aufs_specs_hold_one_option_an_element(label: str) -> None:
    """The SELinux label is an option of its own, as in the other engines' specs; the
    data the kernel gets is Docker's string all the same."""
    lowers = [f"/s/diff/{i:064x}" for i in range(60)]
    specs = aufs_specs("/m", "/s/diff/rw", lowers, label, dirperm1=True)
    assert len(specs) > 1
    assert specs[0].options[1:4] == ("dio", f"xino={XINO}", "dirperm1")
    for spec in specs:
        labels = [o for o in spec.options if o.startswith("context=")]
        assert labels == ([f'context="{label}"'] if label else [])
        assert spec.data.endswith(f',context="{label}"') is bool(label)
