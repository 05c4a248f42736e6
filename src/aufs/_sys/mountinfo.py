"""``/proc/self/mountinfo``: a pure parser and a reader."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` for a space, ``\\134`` for a backslash)."""
    if "\\" not in field and field.isascii():
        return field
    raw = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)
    return os.fsdecode(raw.encode("latin-1"))


@dataclass(frozen=True, slots=True)
class MountEntry:
    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mountpoint: str
    options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str


def parse_line(line: str) -> MountEntry:
    """Parse one line of mountinfo (proc(5)); optional fields end at ``-``."""
    fields = line.rstrip("\n").split(" ")
    sep = fields.index("-", 6)
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major_minor=fields[2],
        root=unescape(fields[3]),
        mountpoint=unescape(fields[4]),
        options=fields[5],
        optional=tuple(fields[6:sep]),
        fstype=fields[sep + 1],
        source=unescape(fields[sep + 2]),
        super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
    )


def parse(text: str) -> list[MountEntry]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read() -> list[MountEntry]:
    with open("/proc/self/mountinfo", encoding="latin-1") as f:
        return parse(f.read())


def mounts_under(prefix: str) -> Iterator[MountEntry]:
    """Mounts at ``prefix`` or below it, deepest last in mount order."""
    prefix = prefix.rstrip("/")
    for entry in read():
        if entry.mountpoint == prefix or entry.mountpoint.startswith(prefix + "/"):
            yield entry


def is_mountpoint(path: str) -> bool:
    """True if something is mounted exactly at ``path`` (which should be a real path)."""
    path = path.rstrip("/") or "/"
    return any(entry.mountpoint == path for entry in read())
