"""``NaiveDiffDriver``: diff/changes/apply_diff/diff_size for a driver that only mounts.

The seed's ``graphdriver.NaiveDiffDriver``: mount the layer (and its parent), compare
the two trees (:func:`aufs.archive.changes_dirs`), export what changed
(:func:`aufs.archive.export_changes`); apply by extracting into the mounted layer.
Every ``get`` is matched by a ``put``, on errors too; a diff stream keeps the layer
mounted until it is closed.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from aufs.archive import Change
    from aufs.graphdriver import ProtoDriver, Status


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
        from aufs.archive.export import naive_diff

        return naive_diff(self.proto, id, parent)

    def changes(self, id: str, parent: str = "") -> list[Change]:
        """Changes against ``parent`` ("" : everything is added)."""
        from aufs.archive.changes import naive_changes

        return naive_changes(self.proto, id, parent)

    def apply_diff(self, id: str, parent: str, stream: IO[bytes]) -> int:
        """Extract a layer tar into the mounted layer; returns :meth:`diff_size`."""
        from aufs.archive.apply import extract_into_dir  # apply imports graphdriver

        layer_fs = self.proto.get(id)
        try:
            extract_into_dir(layer_fs, stream)
        finally:
            self.proto.put(id)
        return self.diff_size(id, parent)

    def diff_size(self, id: str, parent: str = "") -> int:
        """Bytes of the regular files that changed against ``parent``."""
        from aufs.archive.changes import naive_diff_size

        return naive_diff_size(self.proto, id, parent)
