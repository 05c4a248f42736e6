"""Parent chains in ``layers/<id>``: Docker's format, one id a line, nearest parent first."""

from __future__ import annotations

import os

from aufs._sys.files import write_atomic


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
    """Layer ids present in ``layers/`` (Docker's ``loadIds``), ignoring our temp files."""
    try:
        with os.scandir(layers_dir) as it:
            return sorted(
                e.name for e in it
                if e.is_file(follow_symlinks=False) and "~" not in e.name
                and not e.name.endswith("-removing")
            )
    except FileNotFoundError:
        return []
