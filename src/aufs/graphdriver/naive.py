"""``NaiveDiffDriver``: diff/changes/apply_diff/diff_size for a driver that only mounts.

The seed's ``graphdriver.NaiveDiffDriver``: mount the layer (and its parent), compare
the two trees (:func:`aufs.archive.changes_dirs`), export what changed
(:func:`aufs.archive.export_changes`); apply by extracting into the mounted layer.
Every ``get`` is matched by a ``put``, on errors too; a diff stream keeps the layer
mounted until it is closed.
"""

from __future__ import annotations

import contextlib
from typing import IO, TYPE_CHECKING

from aufs.archive.apply import extract_into_dir
from aufs.archive.export import export_changes, export_dir
from aufs.archive.treediff import changes_dirs, changes_size

if TYPE_CHECKING:
    from aufs.archive.change import Change
    from aufs.graphdriver.protocol import ProtoDriver, Status

__all__ = ["NaiveDiffDriver", "naive_changes", "naive_diff", "naive_diff_size"]


class NaiveDiffDriver:
    """Wraps a ``ProtoDriver`` and adds the diff methods, computed from mounted trees."""

    def __init__(self, proto_driver: ProtoDriver) -> None:
        self.proto = proto_driver

    def __str__(self) -> str:
        return str(self.proto)

    def create(self, id: str, parent: str = "") -> None:
        self.proto.create(id, parent)

    def remove(self, id: str) -> None:
        self.proto.remove(id)

    def get(self, id: str, mount_label: str = "") -> str:
        return self.proto.get(id, mount_label)

    def put(self, id: str) -> None:
        self.proto.put(id)

    def exists(self, id: str) -> bool:
        return self.proto.exists(id)

    def status(self) -> Status:
        return self.proto.status()

    def cleanup(self) -> None:
        self.proto.cleanup()

    def diff(self, id: str, parent: str = "") -> IO[bytes]:
        """Tar of the layer's changes against ``parent`` ("" : the whole tree)."""
        return naive_diff(self.proto, id, parent)

    def changes(self, id: str, parent: str = "") -> list[Change]:
        """Changes against ``parent`` ("" : everything is added)."""
        return naive_changes(self.proto, id, parent)

    def apply_diff(self, id: str, parent: str, stream: IO[bytes]) -> int:
        """Extract a layer tar into the mounted layer; returns :meth:`diff_size`."""
        layer_fs = self.proto.get(id)
        try:
            extract_into_dir(layer_fs, stream)
        finally:
            self.proto.put(id)
        return self.diff_size(id, parent)

    def diff_size(self, id: str, parent: str = "") -> int:
        """Bytes of the regular files that changed against ``parent``."""
        return naive_diff_size(self.proto, id, parent)


# -- the naive helpers: any ProtoDriver, the diff computed from mounted trees --------

def naive_diff(driver: ProtoDriver, id: str, parent: str) -> IO[bytes]:
    """The diff of ``id`` against ``parent`` (any ancestor, or none), from mounted trees.

    ``id`` stays mounted until the stream is closed; ``parent`` only while comparing.
    """
    layer_fs = driver.get(id)
    try:
        if not parent:
            return export_dir(layer_fs, on_close=[lambda: driver.put(id)])
        parent_fs = driver.get(parent)
        try:
            changes = changes_dirs(layer_fs, parent_fs)
        finally:
            driver.put(parent)
        return export_changes(layer_fs, changes, on_close=[lambda: driver.put(id)])
    except BaseException:
        with contextlib.suppress(Exception):
            driver.put(id)
        raise


def naive_changes(driver: ProtoDriver, id: str, parent: str) -> list[Change]:
    """Changes of ``id`` against ``parent`` (any layer, or none), from mounted trees."""
    layer_fs = driver.get(id)
    try:
        if not parent:
            return changes_dirs(layer_fs, None)
        parent_fs = driver.get(parent)
        try:
            return changes_dirs(layer_fs, parent_fs)
        finally:
            driver.put(parent)
    finally:
        driver.put(id)


def naive_diff_size(driver: ProtoDriver, id: str, parent: str) -> int:
    """Size of what changed in ``id`` against ``parent``, from mounted trees."""
    layer_fs = driver.get(id)
    try:
        if parent:
            parent_fs = driver.get(parent)
            try:
                changes = changes_dirs(layer_fs, parent_fs)
            finally:
                driver.put(parent)
        else:
            changes = changes_dirs(layer_fs, None)
        return changes_size(layer_fs, changes)
    finally:
        driver.put(id)
