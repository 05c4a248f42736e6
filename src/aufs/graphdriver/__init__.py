"""The graph-driver contract: errors, the ``Driver`` protocol, the registry.

Exception tree::

    DriverError
    ├── NotSupportedError          no union engine can work on this host
    │   └── aufs.AufsNotSupportedError   kernel AUFS asked for, not there
    ├── PrerequisitesError         something the driver needs is missing
    ├── IncompatibleFSError        the backing filesystem cannot hold the store
    ├── LayerNotFoundError         (also LookupError) unknown layer id
    ├── LayerExistsError           create() of an id that exists
    ├── LayerInUseError            remove() of a layer other layers stand on
    └── InvalidLayerIDError        (also ValueError) not a valid layer id
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from aufs.archive import Change

__all__ = [
    "Driver",
    "DriverError",
    "IncompatibleFSError",
    "InitFunc",
    "InvalidLayerIDError",
    "LayerExistsError",
    "LayerInUseError",
    "LayerNotFoundError",
    "NaiveDiffDriver",
    "NotSupportedError",
    "PrerequisitesError",
    "ProtoDriver",
    "drivers",
    "get_driver",
    "register",
]


class DriverError(Exception):
    """Base of every error a graph driver raises on purpose."""


class NotSupportedError(DriverError):
    """The driver cannot work on this host."""


class PrerequisitesError(DriverError):
    """A prerequisite of the driver is missing."""


class IncompatibleFSError(DriverError):
    """The backing filesystem is not compatible with the driver."""


class LayerNotFoundError(DriverError, LookupError):
    """No layer with that id."""


class LayerExistsError(DriverError):
    """A layer with that id already exists."""


class LayerInUseError(DriverError):
    """The layer is in use (a parent of other layers, or busy)."""


class InvalidLayerIDError(DriverError, ValueError):
    """Not a valid layer id."""


Status = list[tuple[str, str]]


@runtime_checkable
class ProtoDriver(Protocol):
    """What every driver implements (the seed's ``ProtoDriver``)."""

    def __str__(self) -> str: ...
    def create(self, id: str, parent: str = "") -> None: ...
    def remove(self, id: str) -> None: ...
    def get(self, id: str, mount_label: str = "") -> str: ...
    def put(self, id: str) -> None: ...
    def exists(self, id: str) -> bool: ...
    def status(self) -> Status: ...
    def cleanup(self) -> None: ...


@runtime_checkable
class Driver(ProtoDriver, Protocol):
    """A full graph driver: ``ProtoDriver`` plus the layer-diff methods."""

    def diff(self, id: str, parent: str = "") -> IO[bytes]: ...
    def changes(self, id: str, parent: str = "") -> list[Change]: ...
    def apply_diff(self, id: str, parent: str, stream: IO[bytes]) -> int: ...
    def diff_size(self, id: str, parent: str = "") -> int: ...


InitFunc = Callable[[str, Sequence[str]], ProtoDriver]
_drivers: dict[str, InitFunc] = {}


def register(name: str, init: InitFunc) -> None:
    """Register a driver's init function under ``name`` (once)."""
    if name in _drivers:
        raise ValueError(f"graph driver {name!r} is already registered")
    _drivers[name] = init


def drivers() -> list[str]:
    return sorted(_drivers)


def get_driver(name: str, home: str | os.PathLike[str], options: Sequence[str] = ()) -> ProtoDriver:
    """Initialise the driver ``name`` in ``home/name``."""
    try:
        init = _drivers[name]
    except KeyError:
        raise NotSupportedError(
            f"graph driver {name!r} is not registered (known: {', '.join(drivers()) or 'none'})"
        ) from None
    return init(os.path.join(os.fspath(home), name), options)


from aufs.graphdriver.naive import NaiveDiffDriver  # noqa: E402  (needs the errors above)
