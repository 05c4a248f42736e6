"""The changes floors of the bench do the work they claim (else the floor is no floor)."""

from __future__ import annotations

import os
from pathlib import Path

from bench import floors


def test_the_skeletons_see_every_name_and_find_those_of_the_parent(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    for d in ("a/b", "c"):
        (upper / d).mkdir(parents=True)
    (lower / "a").mkdir(parents=True)
    for f in ("a/b/new", "a/both", "c/new", "top"):
        (upper / f).write_text("u")
    (lower / "a/both").write_text("l")
    (lower / "top").write_text("l")
    os.symlink("/etc", upper / "link")  # listed, not followed
    (upper / ".wh.gone").write_text("")  # a whiteout: listed, not looked up
    (lower / ".wh.gone").write_text("")
    (upper / "new").mkdir()  # nothing below it is looked up
    (upper / "new/top").write_text("u")
    assert floors.list_dirs(str(upper)) == 11
    # a, a/both, top: found; a/b and below, c and below, link, new: not in the parent
    assert floors.list_and_look_up(str(upper), str(lower)) == 3
    os.symlink(upper, tmp_path / "migrated")  # a layer's own directory may be a link
    assert floors.list_dirs(str(tmp_path / "migrated")) == 11
