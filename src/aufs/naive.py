"""``NaiveDiffDriver``: diff/changes/apply_diff/diff_size for a driver that only mounts.

The seed's ``graphdriver.NaiveDiffDriver``: mount the layer and its parent, compare the
two trees, export what changed; apply by extracting into the mounted layer.
Implemented in the tarball issue (#3); the shape is fixed here.
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
        raise NotImplementedError

    def changes(self, id: str, parent: str = "") -> list[Change]:
        raise NotImplementedError

    def apply_diff(self, id: str, parent: str, stream: IO[bytes]) -> int:
        raise NotImplementedError

    def diff_size(self, id: str, parent: str = "") -> int:
        raise NotImplementedError
