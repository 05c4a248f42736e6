"""Migration pieces that need neither root nor a store: ordering and relocation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aufs.graphdriver import DriverError, InvalidLayerIDError, validate_id
from aufs.migrate import _Image, _parents_first
from aufs.store.store import relocate


def images(parents: dict[str, str]) -> dict[str, _Image]:
    return {i: _Image(id=i, parent=p, layer=f"/graph/{i}/layer") for i, p in parents.items()}


def test_parents_come_first_whatever_the_listing_order() -> None:
    listed = images({"a": "b", "c": "", "b": "c", "x": "a", "lone": "", "y": "c"})
    order = [i.id for i in _parents_first(listed)]
    assert sorted(order) == sorted(listed)
    for image in listed.values():
        if image.parent:
            assert order.index(image.parent) < order.index(image.id)


def test_a_parent_already_in_the_store_is_not_in_the_order() -> None:
    order = [i.id for i in _parents_first(images({"b": "a", "c": "b"}))]
    assert order == ["b", "c"]


def test_a_deep_chain_needs_no_recursion() -> None:
    n = 5000
    chain = images({f"i{k}": (f"i{k - 1}" if k else "") for k in reversed(range(n))})
    assert [i.id for i in _parents_first(chain)] == [f"i{k}" for k in range(n)]


def test_a_cycle_is_an_error() -> None:
    with pytest.raises(DriverError, match="its own ancestor"):
        _parents_first(images({"a": "b", "b": "a"}))


def test_relocate_renames(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "f").write_text("x")
    relocate(str(old), str(tmp_path / "new"))
    assert (tmp_path / "new" / "f").read_text() == "x" and not old.exists()


def test_relocate_replaces_symlink_of_failed_run(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "f").write_text("x")
    new = tmp_path / "new"
    new.symlink_to(old)  # what a run whose rename failed left
    relocate(str(old), str(new))
    assert not new.is_symlink()
    assert (new / "f").read_text() == "x"
    assert not old.exists()


def test_relocate_replaces_an_empty_dir_but_never_data(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "f").write_text("x")
    new = tmp_path / "new"
    new.mkdir()  # a layer registered before its data moved
    relocate(str(old), str(new))
    assert (new / "f").read_text() == "x"
    other = tmp_path / "other"
    other.mkdir()
    (other / "g").write_text("y")
    with pytest.raises(DriverError, match="in the way"):
        relocate(str(other), str(new))
    assert (new / "f").read_text() == "x" and (other / "g").read_text() == "y"


def test_relocate_symlinks_where_rename_cannot(tmp_path: Path) -> None:
    """A rename onto a non-directory fails (ENOTDIR); the fallback cannot symlink over it
    either, and says both reasons."""
    old = tmp_path / "old"
    old.mkdir()
    new = tmp_path / "new"
    new.write_text("a file")
    with pytest.raises(DriverError, match=r"rename: .*symlink"):
        relocate(str(old), str(new))
    assert old.is_dir() and new.read_text() == "a file"


def test_relocate_falls_back_to_a_symlink(tmp_path: Path) -> None:
    """A directory cannot be renamed into its own subtree (EINVAL): symlinked instead."""
    old = tmp_path / "old"
    old.mkdir()
    new = old / "inside"
    relocate(str(old), str(new))
    assert os.readlink(new) == str(old)


def test_relocate_without_link_leaves_both_sides_alone(tmp_path: Path) -> None:
    """Where a symlink is not allowed (not a graph's layer): a failed rename is an error,
    and a symlink already there (another directory's) is never dropped."""
    old = tmp_path / "old"
    old.mkdir()
    new = old / "inside"  # rename into its own subtree: EINVAL
    with pytest.raises(DriverError, match="symlink is kept only"):
        relocate(str(old), str(new), link=False)
    assert old.is_dir() and not os.path.lexists(new)
    other = tmp_path / "new"
    other.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DriverError, match="is a symlink to"):
        relocate(str(old), str(other), link=False)
    assert os.readlink(other) == str(tmp_path / "elsewhere") and old.is_dir()


@pytest.mark.parametrize(("layer_id", "valid"), [
    ("a" * 64, True), ("ctr1-init", True), ("x.y_z", True), ("a" * 129, False),
    ("", False), (".", False), ("..", False), ("a/b", False), ("bad id", False),
    ("x-removing", False),
])
def test_the_public_id_rule_migrate_checks_with(layer_id: str, valid: bool) -> None:
    if valid:
        assert validate_id(layer_id) == layer_id
    else:
        with pytest.raises(InvalidLayerIDError):
            validate_id(layer_id)
