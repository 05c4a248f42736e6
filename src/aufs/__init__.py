"""aufs — Docker's AUFS layer store, in Python, on today's kernels.

>>> import aufs
>>> d = aufs.init("/var/lib/aufs")            # doctest: +SKIP
>>> d.create("base"); d.create("top", "base")  # doctest: +SKIP
>>> d.get("top")                               # doctest: +SKIP
'/var/lib/aufs/mnt/top'
"""

from __future__ import annotations

from aufs import graphdriver
from aufs._sys.mount import MS_REMOUNT
from aufs.driver import Driver, init
from aufs.errors import AufsNotSupportedError
from aufs.unmount import unmount

__all__ = ["MS_REMOUNT", "AufsNotSupportedError", "Driver", "init", "unmount"]
__version__ = "0.1.0"


def _init(root: str, options: object = ()) -> Driver:
    return init(root, options)  # type: ignore[arg-type]


graphdriver.register("aufs", _init)
