"""A progress bar on a terminal (bytes moved), nothing otherwise.

``tqdm`` draws it when the stream is a TTY and tqdm is installed; the bar is a no-op
anywhere else, so scripts and pipes see no noise.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Iterator
from typing import IO, Any, TextIO


class Bar:
    def __init__(self, impl: Any = None) -> None:
        self._impl = impl

    def update(self, n: int) -> None:
        if self._impl is not None and n:
            self._impl.update(n)

    def wrap(self, stream: IO[bytes]) -> IO[bytes]:
        """``stream``, counting what is read from it."""
        if self._impl is None:
            return stream
        return _Counting(stream, self)  # type: ignore[return-value]


class _Counting(io.RawIOBase):
    def __init__(self, raw: IO[bytes], bar: Bar) -> None:
        self._raw = raw
        self._bar = bar

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def bar(desc: str, stream: TextIO, total: int | None = None) -> Iterator[Bar]:
    impl: Any = None
    if stream.isatty():
        with contextlib.suppress(ImportError):
            tqdm = importlib.import_module("tqdm")
            impl = tqdm.tqdm(desc=desc, total=total, unit="B", unit_scale=True,
                             unit_divisor=1024, file=stream, leave=False)
    try:
        yield Bar(impl)
    finally:
        if impl is not None:
            impl.close()
