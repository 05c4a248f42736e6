"""The mount as data: a :class:`MountSpec` is a serialized mount call (type, source,
target, options, flags, and how to issue it).

Union engines build specs with pure functions; only :mod:`aufs._sys.mount` executes
them. Specs print themselves in every mount error. Defined on the system floor so that
the module that mounts needs nothing from the engines above it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["MountMethod", "MountSpec"]


class MountMethod(enum.Enum):
    MOUNT = "mount"        # one mount(2), options joined with ","
    FSCONFIG = "fsconfig"  # the new mount API: one fsconfig() per option (no page limit)
    HELPER = "helper"      # run argv (a FUSE daemon, foreground) until the target is mounted


@dataclass(frozen=True, slots=True)
class MountSpec:
    fstype: str
    source: str
    target: str
    options: tuple[str, ...] = ()
    flags: int = 0
    method: MountMethod = MountMethod.MOUNT
    argv: tuple[str, ...] = ()
    cwd: str | None = None  # MOUNT with paths relative to this directory

    @property
    def data(self) -> str:
        return ",".join(self.options)

    def __str__(self) -> str:
        if self.method is MountMethod.HELPER:
            return " ".join(self.argv)
        where = f" (in {self.cwd})" if self.cwd else ""
        flags = f" flags=0x{self.flags:x}" if self.flags else ""
        data = self.data
        if len(data) > 300:
            data = f"{data[:140]}…{data[-140:]} ({len(data)} bytes)"
        head = f"{self.method.value} -t {self.fstype} {self.source} {self.target}"
        return f"{head} -o {data}{flags}{where}"
