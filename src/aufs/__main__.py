"""``python -m aufs``."""

from aufs.cli import entry

entry()
