"""Hostile layer tars: nothing is created, changed or followed outside ``diff/<id>``.

Docker's pkg/archive breakout tables (utils_test.go, archive_test.go) plus our own. Each
hostile case must raise BreakoutError, leave a victim directory outside the store as it
was, and leave the layer exactly as before the call (apply_diff is all or nothing).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

import aufs
from aufs.archive import BreakoutError
from aufs.whiteout import WH_OPAQUE, WH_PREFIX
from tests.safety.snapshot import snapshot

VICTIM = "@VICTIM@"  # replaced by the victim directory's absolute path

# (name, type, linkname or data)
Entry = tuple[str, bytes, str]
REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def make_tar(entries: list[Entry], victim: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name.replace(VICTIM, victim))
            info.type = kind
            info.mode = 0o755 if kind == DIR else 0o644
            if kind in (SYM, LNK):
                info.linkname = extra.replace(VICTIM, victim)
                tf.addfile(info)
            else:
                data = extra.encode()
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BREAKOUTS: dict[str, list[Entry]] = {
    "dotdot": [("../victim/dotdot", REG, "pwned")],
    "dotdot-deep": [("../../../../../../../../victim/deep", REG, "pwned")],
    "a/../../x": [("a/../../victim/x", REG, "pwned")],
    "slash-dotdot": [("/../victim/slash-dotdot", REG, "pwned")],
    "dotdot-dir": [("../victim/newdir", DIR, "")],
    "dotdot-symlink-name": [("../victim/sym", SYM, "/etc")],
    "through-existing-symlink": [("existing-sym/file", REG, "pwned")],
    "through-existing-symlink-dir": [("existing-sym/newdir", DIR, "")],
    "through-existing-symlink-deep": [("existing-sym/a/b/c", REG, "pwned")],
    "through-new-symlink": [("s", SYM, VICTIM), ("s/file", REG, "pwned")],
    "through-new-relative-symlink": [("s", SYM, "../../../../../../.."),
                                     ("s/victim/file", REG, "pwned")],
    "through-new-symlink-in-subdir": [("d", DIR, ""), ("d/s", SYM, VICTIM),
                                      ("d/s/file", REG, "pwned")],
    "through-symlink-after-dotdot-cleaning": [("s", SYM, VICTIM), ("x/../s/file", REG, "pwned")],
    "whiteout-through-symlink": [("s", SYM, VICTIM), (f"s/{WH_PREFIX}file", REG, "")],
    "opaque-through-symlink": [("s", SYM, VICTIM), (f"s/{WH_OPAQUE}", REG, "")],
    "hardlink-dotdot": [("h", LNK, "../victim/file")],
    "hardlink-deep-dotdot": [("h", LNK, "a/../../../victim/file")],
    "hardlink-absolute-outside": [("h", LNK, f"{VICTIM}/file")],
    "hardlink-missing": [("h", LNK, "no-such-file")],
    "hardlink-missing-dir": [("h", LNK, "no/such/file")],
    "hardlink-through-existing-symlink": [("h", LNK, "existing-sym/file")],
    "hardlink-through-new-symlink": [("s", SYM, VICTIM), ("h", LNK, "s/file")],
    "hardlink-to-root": [("h", LNK, ".")],
    "hardlink-then-write": [("h", LNK, "../victim/file"), ("h", REG, "pwned")],
    # the layer is damaged first (in staging), then the breakout: nothing of it may stay
    "damage-then-breakout": [("keep", REG, "changed"), (f"{WH_PREFIX}keep", REG, ""),
                             (WH_OPAQUE, REG, ""), (".", DIR, ""),
                             ("../victim/x", REG, "pwned")],
}

# Not errors, but the victim must stay untouched: symlinks are replaced, never written through.
HARMLESS: dict[str, list[Entry]] = {
    "file-over-symlink": [("s", SYM, f"{VICTIM}/file"), ("s", REG, "pwned")],
    "dir-over-symlink": [("s", SYM, VICTIM), ("s", DIR, "")],
    "file-over-existing-symlink": [("existing-sym", REG, "pwned")],
    "hardlink-to-symlink-then-write": [("s", SYM, f"{VICTIM}/file"), ("h", LNK, "s"),
                                       ("h", REG, "pwned")],
    "absolute-symlink-target": [("abs", SYM, f"{VICTIM}/file")],
    "absolute-name": [(f"{VICTIM}/file", REG, "inside")],  # becomes <layer>/<victim path>
    "whiteout-of-symlink": [("s", SYM, VICTIM), (f"{WH_PREFIX}s", REG, "")],
}


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "file").write_text("victim")
    (v / "sub").mkdir()
    (v / "sub" / "inner").write_text("inner")
    return v


def _layer(driver: aufs.Driver, victim: Path) -> str:
    driver.create("L")
    diff = driver.layout.diff("L")
    with open(f"{diff}/keep", "w") as f:
        f.write("keep")
    os.symlink(str(victim), f"{diff}/existing-sym")
    return diff


@pytest.mark.parametrize("case", sorted(BREAKOUTS))
def test_breakout_is_refused(driver: aufs.Driver, victim: Path, case: str) -> None:
    diff = _layer(driver, victim)
    victim_before = snapshot(str(victim))
    layer_before = snapshot(diff)
    with pytest.raises(BreakoutError):
        driver.apply_diff("L", "", io.BytesIO(make_tar(BREAKOUTS[case], str(victim))))
    assert snapshot(str(victim)) == victim_before
    assert snapshot(diff) == layer_before
    assert sorted(os.listdir(victim.parent)) == ["store", "victim"]
    assert os.listdir(driver.layout.staging_dir) == []


@pytest.mark.parametrize("case", sorted(HARMLESS))
def test_symlinks_are_never_written_through(driver: aufs.Driver, victim: Path,
                                            case: str) -> None:
    diff = _layer(driver, victim)
    victim_before = snapshot(str(victim))
    driver.apply_diff("L", "", io.BytesIO(make_tar(HARMLESS[case], str(victim))))
    assert snapshot(str(victim)) == victim_before
    assert sorted(os.listdir(victim.parent)) == ["store", "victim"]
    assert os.path.isfile(f"{diff}/keep")
