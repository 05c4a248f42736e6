"""A progress bar on a terminal (bytes moved and tar entries), nothing otherwise.

``tqdm`` draws it when the stream is a TTY and tqdm is installed; the bar is a no-op
anywhere else, so scripts and pipes see no noise. Entries are counted through
:mod:`aufs.observe`: the archive code calls the hook this bar sets for its block.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import time
from collections.abc import Iterator
from typing import IO, Any, TextIO

from aufs.observe import counting_entries


class Bar:
    def __init__(self, impl: Any = None) -> None:
        self._impl = impl
        self.entries = 0
        self._drawn = 0.0

    def update(self, n: int) -> None:
        if self._impl is not None and n:
            self._impl.update(n)

    def entry(self) -> None:
        """One more tar entry; redrawn at most every ``mininterval`` (tqdm's, 0.1 s)."""
        self.entries += 1
        if self._impl is None:
            return
        now = time.monotonic()
        if now - self._drawn >= self._impl.mininterval:
            self._drawn = now
            self._impl.set_postfix_str(f"{self.entries:,} entries")

    def finish(self) -> None:
        """Draw the final counts (the bar is cleared when it closes)."""
        if self._impl is not None and self.entries:
            self._impl.set_postfix_str(f"{self.entries:,} entries")

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


def _width(stream: TextIO) -> int:
    """The terminal's columns; 0 for one that reports no size (tqdm would then draw nothing)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def bar(desc: str, stream: TextIO, total: int | None = None) -> Iterator[Bar]:
    impl: Any = None
    if stream.isatty():
        with contextlib.suppress(ImportError):
            tqdm = importlib.import_module("tqdm")
            impl = tqdm.tqdm(desc=desc, total=total, unit="B", unit_scale=True,
                             unit_divisor=1024, file=stream, leave=False,
                             **({} if _width(stream) else {"ncols": 80, "nrows": 24}))
    b = Bar(impl)
    try:
        with counting_entries(b.entry if impl is not None else None):
            yield b
        b.finish()
    finally:
        if impl is not None:
            impl.close()
