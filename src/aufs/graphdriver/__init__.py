"""The graph-driver contract: errors, the ``Driver`` protocol, the registry.

The errors are defined in :mod:`aufs.errors`, the protocols in
:mod:`aufs.graphdriver.protocol`, ``NaiveDiffDriver`` in :mod:`aufs.graphdriver.naive`,
the layer-id rule ``validate_id`` in :mod:`aufs.store.layout`; all are re-exported here
(their public home). Exception tree::

    DriverError
    ├── NotSupportedError          no union engine can work on this host
    │   └── aufs.AufsNotSupportedError   kernel AUFS asked for, not there
    ├── PrerequisitesError         something the driver needs is missing
    ├── IncompatibleFSError        the backing filesystem cannot hold the store
    ├── LayerNotFoundError         (also LookupError) unknown layer id
    ├── LayerExistsError           create() of an id that exists
    ├── LayerInUseError            remove() of a layer other layers stand on
    ├── InvalidLayerIDError        (also ValueError) not a valid layer id
    └── StoreCorruptError          a file of the store is damaged or tampered with
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aufs.errors import (
    DriverError,
    IncompatibleFSError,
    InvalidLayerIDError,
    LayerExistsError,
    LayerInUseError,
    LayerNotFoundError,
    NotSupportedError,
    PrerequisitesError,
    StoreCorruptError,
)
from aufs.graphdriver.protocol import Driver, ProtoDriver, Status

if TYPE_CHECKING:
    from aufs.graphdriver.naive import NaiveDiffDriver
    from aufs.store.layout import validate_id


def __getattr__(name: str) -> object:
    # NaiveDiffDriver brings the tar code with it: imported when asked for (PEP 562),
    # so that `import aufs` (which registers the driver here) stays light.
    if name == "NaiveDiffDriver":
        from aufs.graphdriver.naive import NaiveDiffDriver

        globals()[name] = NaiveDiffDriver
        return NaiveDiffDriver
    if name == "validate_id":  # the id rule (docs/API.md, "Layer ids"): the store's own
        from aufs.store.layout import validate_id

        globals()[name] = validate_id
        return validate_id
    raise AttributeError(f"module 'aufs.graphdriver' has no attribute {name!r}")

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
    "Status",
    "StoreCorruptError",
    "drivers",
    "get_driver",
    "register",
    "validate_id",
]


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
