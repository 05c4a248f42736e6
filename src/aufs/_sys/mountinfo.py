"""``/proc/self/mountinfo``: a pure parser and a reader."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import NamedTuple

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` for a space, ``\\134`` for a backslash)."""
    if "\\" not in field and field.isascii():
        return field
    raw = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)
    return os.fsdecode(raw.encode("latin-1"))


class MountEntry(NamedTuple):
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


def under(entries: list[MountEntry], prefix: str) -> Iterator[MountEntry]:
    """Those of ``entries`` at ``prefix`` or below it, in mount order. Pure."""
    prefix = prefix.rstrip("/")
    for entry in entries:
        if entry.mountpoint == prefix or entry.mountpoint.startswith(prefix + "/"):
            yield entry


def mounts_under(prefix: str) -> Iterator[MountEntry]:
    """Mounts at ``prefix`` or below it, deepest last in mount order."""
    return under(read(), prefix)


def top_at(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The mount on top at ``path`` — the one ``umount2`` removes, the one a lookup of
    ``path`` sees (a stack is listed bottom first) — or None. Pure."""
    return next((e for e in reversed(entries) if e.mountpoint == path), None)


def self_bind_at(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The topmost mount at ``path`` if it is ``path`` bound onto itself, else None. Pure.

    A bind of a directory onto itself shows the device of the mount it sits on, and as
    its root the directory's own path inside that filesystem. A filesystem mounted at
    ``path`` (a loop device, a tmpfs) or another directory bound there does not.
    """
    path = path.rstrip("/") or "/"
    by_id = {e.mount_id: e for e in entries}
    top = top_at(entries, path)
    if top is None:
        return None
    under = by_id.get(top.parent_id)
    if under is None or under.major_minor != top.major_minor:
        return None
    rel = os.path.relpath(path, under.mountpoint)
    expected = os.path.normpath(os.path.join(under.root, rel))
    return top if top.root == expected else None


def is_mountpoint(path: str) -> bool:
    """True if something is mounted exactly at ``path`` (which should be a real path)."""
    path = path.rstrip("/") or "/"
    return any(entry.mountpoint == path for entry in read())
