"""What a pull or push tells while it runs: a progress bar per layer on a terminal (the
project's :mod:`aufs.progress`, drawn by tqdm), JSON lines with ``--json``, else nothing.

JSON events are one object a line: ``{"event": "layer", "digest": …, "status": …}`` as a
layer changes state (``exists``, ``downloading``, ``downloaded``, ``extracted``,
``mounted``, ``uploading``, ``uploaded``), ``{"event": "progress", "digest": …,
"bytes": …, "total": …}`` at most every half second a transfer, and one last event for
the whole operation (``pulled`` / ``pushed``).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from aufs import progress

OnBytes = Callable[[int], None]
_EVERY = 0.5


class Events:
    def __init__(self, *, json_out: TextIO | None = None, bars: TextIO | None = None) -> None:
        self._json = json_out
        self._bars = bars if json_out is None else None
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        if self._json is None:
            return
        line = json.dumps({"event": event, **fields})
        with self._lock:
            self._json.write(line + "\n")
            self._json.flush()

    def layer(self, digest: str, status: str, **fields: Any) -> None:
        self.emit("layer", digest=digest, status=status, **fields)

    @contextlib.contextmanager
    def transfer(self, verb: str, digest: str, total: int | None) -> Iterator[OnBytes]:
        """Around a blob transfer; yields the callback that counts its bytes."""
        short = digest.split(":", 1)[-1][:12]
        if self._bars is not None:
            with progress.bar(f"{short} {verb}", self._bars, total) as b:
                yield b.update
            return
        done = 0
        last = time.monotonic()

        def count(n: int) -> None:
            nonlocal done, last
            done += n
            now = time.monotonic()
            if now - last >= _EVERY:
                last = now
                self.emit("progress", digest=digest, bytes=done, total=total)

        yield count
