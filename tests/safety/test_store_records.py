"""The store's image records are read like its layer files: never through a symlink,
never waiting on a FIFO, never without a bound on their size."""

from __future__ import annotations

import io
import os

import pytest

import aufs
from aufs.errors import LayerMountedError
from aufs.store import images


@pytest.fixture
def store(overlay_driver: aufs.Driver) -> aufs.Driver:
    return overlay_driver


@pytest.mark.parametrize("swap", ["fifo", "symlink to /dev/zero", "too large"])
def test_a_damaged_image_record_is_no_record(store: aufs.Driver, swap: str) -> None:
    store.create("l")
    path = store.layout.image("l")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "too large":
        with open(path, "wb") as f:
            f.truncate(images.RECORD_LIMIT + 1)
    else:
        os.symlink("/dev/zero", path)
    assert images.read(store.layout, "l") is None  # returns at once, bounded


def test_apply_refuses_a_base_layer_held_by_get(store: aufs.Driver) -> None:
    """get() of a layer without parents hands out diff/<id> itself: an apply's swap would
    pull the tree away from under its holder."""
    store.create("b")
    root = store.get("b")
    try:
        with pytest.raises(LayerMountedError, match="in use"):
            store.apply_diff("b", "", io.BytesIO(b"\0" * 1024))
        assert os.listdir(root) == []
    finally:
        store.put("b")
    store.apply_diff("b", "", io.BytesIO(b"\0" * 1024))  # released: fine again
