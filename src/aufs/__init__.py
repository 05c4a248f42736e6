"""aufs — Docker's AUFS layer store, in Python, on today's kernels.

>>> import aufs
>>> d = aufs.init("/var/lib/aufs")            # doctest: +SKIP
>>> d.create("base"); d.create("top", "base")  # doctest: +SKIP
>>> d.get("top")                               # doctest: +SKIP
'/var/lib/aufs/mnt/top'

The public names are imported on first use (PEP 562 ``__getattr__``): ``import aufs``
costs only :mod:`aufs.graphdriver`, so that a command that needs little starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aufs import graphdriver

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aufs._sys.mount import MS_REMOUNT
    from aufs.driver import Driver, init
    from aufs.errors import AufsNotSupportedError
    from aufs.unmount import unmount

__all__ = ["MS_REMOUNT", "AufsNotSupportedError", "Driver", "init", "unmount"]
__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "MS_REMOUNT": "aufs._sys.mount",
    "Driver": "aufs.driver",
    "init": "aufs.driver",
    "AufsNotSupportedError": "aufs.errors",
    "unmount": "aufs.unmount",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aufs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _init(root: str, options: Sequence[str] = ()) -> Driver:
    from aufs.driver import init

    return init(root, options)


graphdriver.register("aufs", _init)
