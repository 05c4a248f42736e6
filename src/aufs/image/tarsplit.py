"""Byte-exact layer tars (stub: filled in by the tar-split recorder)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO

from aufs.store.layout import Layout


class Unusable(Exception):
    """No tar-split for the layer, or the layer changed since it was recorded."""


class Rebuilt:
    diff_id: str
    stream: IO[bytes]

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)


@contextlib.contextmanager
def open_rebuilt(layout: Layout, layer_id: str) -> Iterator[Rebuilt]:
    raise Unusable(f"layer {layer_id}: no tar-split in {layout.tar_split(layer_id)}")
    yield Rebuilt()
