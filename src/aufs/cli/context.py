"""What every command shares: the store opened once per command, usage errors, sizes."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from aufs.driver import Driver

DEFAULT_ROOT = "/var/lib/aufs"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line asks for something that cannot be (exit status 2)."""


class Failed(Exception):
    """The operation failed for a reason its message says (exit status 1)."""



# -- the store, opened once per command ------------------------------------------------

class Context:
    # A plain class: `aufs --version` imports nothing it does not print.
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.status = EXIT_OK  # a command's exit status when it fails without an error
        self._driver: Driver | None = None

    @property
    def root(self) -> str:
        root: str = self.args.root or os.environ.get("AUFS_ROOT") or DEFAULT_ROOT
        return root

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            from aufs import driver

            opts = [f"aufs.engine={self.args.engine}"] if self.args.engine else []
            from aufs.store import lock

            lock.on_wait = _say_when_waiting  # a wait for the store lock over 1 s is told
            if getattr(self.args, "reads", False):
                self._driver = driver.open_for_reading(self.root, opts)
            else:
                self._driver = driver.init(self.root, opts)
        return self._driver

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()

    def layer(self, ref: str) -> str:
        """A layer id, or a name given by ``import --name``."""
        d = self.driver
        if d.exists(ref):
            return ref
        from aufs.image import names

        return names.read(d.layout).get(ref, ref)

    def out(self, obj: object) -> None:
        json.dump(obj, sys.stdout, indent=2)
        sys.stdout.write("\n")


def _say_when_waiting(line: str) -> None:
    print(f"aufs: {line} ...", file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
