"""``init`` options: ``"key=value"`` strings to a frozen :class:`DriverOptions`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

ENGINES = ("auto", "aufs", "overlay", "fuse-overlayfs")


class DriverOptions(NamedTuple):  # not a dataclass: the CLI's parser imports this module
    engine: str = "auto"


def parse(options: Sequence[str] | None) -> DriverOptions:
    """Parse driver options; an unknown key or a bad value raises ValueError."""
    engine = "auto"
    if isinstance(options, str):
        raise ValueError("options must be a sequence of 'key=value' strings, not one string")
    for opt in options or ():
        if not isinstance(opt, str) or "=" not in opt:
            raise ValueError(f"malformed option {opt!r}: expected key=value")
        key, value = (part.strip() for part in opt.split("=", 1))
        if key.lower() == "aufs.engine":
            if value not in ENGINES:
                raise ValueError(f"aufs.engine must be one of {', '.join(ENGINES)}, not {value!r}")
            engine = value
        else:
            raise ValueError(f"unknown option {key!r} for the aufs driver (known: aufs.engine)")
    return DriverOptions(engine=engine)
