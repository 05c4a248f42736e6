"""Mount specs are data: built by pure functions, checked here without mounting."""

from __future__ import annotations

import pytest

from aufs._sys.mount import MS_REMOUNT
from aufs.union.aufs import aufs_specs, format_mount_label
from aufs.union.base import Branches, MountMethod, escape_overlay_path
from aufs.union.fuse_overlayfs import FuseCaps, fuse_specs
from aufs.union.overlay import OverlayCaps, overlay_specs, short_name


@pytest.mark.parametrize(
    ("src", "label", "expected"),
    [
        ("", "", ""),
        ("a=b", "", "a=b"),
        ("", "system_u:object_r:svirt_sandbox_file_t:s0:c1,c2",
         'context="system_u:object_r:svirt_sandbox_file_t:s0:c1,c2"'),
        ("append:/x=ro+wh", "l", 'append:/x=ro+wh,context="l"'),
    ],
)
def test_format_mount_label(src: str, label: str, expected: str) -> None:
    assert format_mount_label(src, label) == expected


def test_aufs_single_mount_exact_string() -> None:
    specs = aufs_specs("/r/mnt/3", "/r/diff/3", ["/r/diff/2", "/r/diff/1"])
    assert len(specs) == 1
    spec = specs[0]
    assert (spec.fstype, spec.source, spec.target, spec.flags) == ("aufs", "none", "/r/mnt/3", 0)
    assert spec.data == (
        "br:/r/diff/3=rw:/r/diff/2=ro+wh:/r/diff/1=ro+wh,dio,xino=/dev/shm/aufs.xino")


def test_aufs_dirperm1_and_label() -> None:
    spec = aufs_specs("/t", "/rw", ["/ro"], "lbl", dirperm1=True)[0]
    assert spec.data == 'br:/rw=rw:/ro=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1,context="lbl"'


def test_aufs_base_layer_has_only_rw_branch() -> None:
    assert aufs_specs("/t", "/rw", [])[0].data == "br:/rw=rw,dio,xino=/dev/shm/aufs.xino"


def _room(label: str = "", dirperm1: bool = False, page: int = 4096) -> int:
    return page - len(label) - 54 - (8 if dirperm1 else 0)


@pytest.mark.parametrize("dirperm1", [False, True])
@pytest.mark.parametrize("label", ["", "some_label"])
@pytest.mark.parametrize("slack", [0, 1])
def test_aufs_page_boundary(dirperm1: bool, label: str, slack: int) -> None:
    """Branches that fit exactly stay in the first mount; one byte more goes to append."""
    rw = "/rw"
    room = _room(label, dirperm1)
    first = f"br:{rw}=rw"
    # Lowers of 10-char entries (":/lNNN=ro+wh" is 12 chars), then one sized to end at room.
    lowers = [f"/l{i:03d}" for i in range((room - len(first)) // 12 - 1)]
    used = len(first) + 12 * len(lowers)
    last_len = room - used - len(":=ro+wh") + slack  # slack=1: one byte too many
    lowers.append("/" + "x" * (last_len - 1))
    specs = aufs_specs("/t", rw, lowers, label, dirperm1=dirperm1)
    if slack == 0:
        assert len(specs) == 1
        head = specs[0].data.split(",dio,")[0]
        assert len(head) == room
    else:
        assert len(specs) == 2
        assert specs[1].flags == MS_REMOUNT
        assert specs[1].data == format_mount_label(f"append:{lowers[-1]}=ro+wh", label)
    # The first mount never exceeds a page.
    assert len(specs[0].data) < 4096


def test_aufs_many_layers_appended_in_order() -> None:
    lowers = [f"/var/lib/docker/aufs/diff/{i:064d}" for i in range(126)]
    specs = aufs_specs("/t", "/rw", lowers)
    first_lowers = specs[0].data.split(",dio,")[0].split(":")[2:]
    appended = [s.data.removeprefix("append:").removesuffix("=ro+wh") for s in specs[1:]]
    assert [b.removesuffix("=ro+wh") for b in first_lowers] + appended == lowers
    assert all(s.flags == MS_REMOUNT for s in specs[1:])
    assert all(len(s.data) < 4096 for s in specs)


def _b(n: int, label: str = "") -> Branches:
    return Branches(target="/r/mnt/x", rw="/r/diff/x",
                    lowers=tuple(f"/r/diff/{i}" for i in range(n)), work="/r/.aufs/work/x",
                    label=label)


def test_overlay_classic_mount() -> None:
    caps = OverlayCaps(new_api=False, extra_options=("index=off",))
    (spec,) = overlay_specs(_b(2), caps)
    assert spec.method is MountMethod.MOUNT
    assert spec.data == ("lowerdir=/r/diff/0:/r/diff/1,upperdir=/r/diff/x,"
                         "workdir=/r/.aufs/work/x,index=off")


def test_overlay_new_api_one_option_per_lower() -> None:
    caps = OverlayCaps(new_api=True, extra_options=())
    (spec,) = overlay_specs(_b(300, label="lbl"), caps)
    assert spec.method is MountMethod.FSCONFIG
    assert spec.options[:2] == ("lowerdir+=/r/diff/0", "lowerdir+=/r/diff/1")
    assert spec.options[-3:] == ("upperdir=/r/diff/x", "workdir=/r/.aufs/work/x",
                                 'context="lbl"')


def test_overlay_over_a_page_needs_short_links() -> None:
    caps = OverlayCaps(new_api=False, extra_options=())
    with pytest.raises(ValueError, match="short link"):
        overlay_specs(_b(400), caps)
    names = [short_name(f"/r/diff/{i}") for i in range(400)]
    (spec,) = overlay_specs(_b(400), caps, "/r/.aufs/l", names)
    assert spec.cwd == "/r/.aufs/l"
    assert spec.data.startswith(f"lowerdir={names[0]}:{names[1]}:")
    assert "upperdir=../../diff/x" in spec.data and "workdir=../work/x" in spec.data
    assert len(spec.data) < 4096


def test_overlay_refuses_more_than_500_lowers() -> None:
    with pytest.raises(ValueError, match="500"):
        overlay_specs(_b(501), OverlayCaps(new_api=True, extra_options=()))


@pytest.mark.parametrize(("raw", "escaped"), [("/a/b", "/a/b"), ("/a:b", "/a\\:b"),
                                               ("/a,b", "/a\\,b"), ("/a\\b", "/a\\\\b")])
def test_escape_overlay_path(raw: str, escaped: str) -> None:
    assert escape_overlay_path(raw) == escaped


def test_fuse_argv() -> None:
    caps = FuseCaps(binary="/usr/bin/fuse-overlayfs", fusermount=None, as_root=True)
    (spec,) = fuse_specs(_b(2), caps)
    assert spec.method is MountMethod.HELPER
    assert spec.argv == ("/usr/bin/fuse-overlayfs", "-o",
                         "lowerdir=/r/diff/0:/r/diff/1,upperdir=/r/diff/x,"
                         "workdir=/r/.aufs/work/x", "/r/mnt/x")
    assert "fuse-overlayfs -o lowerdir=" in str(spec)
