"""The ``aufs`` command line (placeholder; the full CLI is issue #4)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("aufs: CLI not built yet", file=sys.stderr)
    return 1


def entry() -> None:
    sys.exit(main())
