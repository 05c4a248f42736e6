"""Parent chains in ``layers/<id>``: Docker's format, one id a line, nearest parent first."""

from __future__ import annotations

import os

from aufs._sys.files import write_atomic
from aufs.store.layout import is_valid_id


def format_chain(parents: list[str]) -> bytes:
    """The file body for a layer whose ancestors are ``parents`` (nearest first)."""
    return "".join(f"{p}\n" for p in parents).encode()


def parse_chain(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def read_chain(path: str) -> list[str]:
    """Ancestors of a layer, nearest first; FileNotFoundError if the layer is unknown."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):  # a 500-layer chain is 33 KB
            data += chunk
    finally:
        os.close(fd)
    return parse_chain(data)


def write_chain(path: str, parents: list[str]) -> None:
    write_atomic(path, format_chain(parents))


def list_ids(layers_dir: str) -> list[str]:
    """Layer ids present in ``layers/`` (Docker's ``loadIds``: every entry but
    directories), also one whose entry is damaged (a symlink, a FIFO: it fails on its
    own, naming the file); our temp files (``~``), ``-removing`` markers and other
    invalid names are no layers (``aufs check`` reports them)."""
    try:
        with os.scandir(layers_dir) as it:
            return sorted(e.name for e in it
                          if is_valid_id(e.name) and not e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
