"""Every error aufs raises on purpose, in one place; this module imports nothing of aufs.

The public names stay where API.md puts them (``aufs.graphdriver.*Error``,
``aufs.archive.ArchiveError``/``BreakoutError``, ``aufs.AufsNotSupportedError``): those
modules re-export these classes. Every module of the package imports errors from here,
so an error never drags in the module that happens to raise it.

Exception tree::

    DriverError
    ├── NotSupportedError          no union engine can work on this host
    │   └── AufsNotSupportedError  kernel AUFS asked for, not there
    ├── PrerequisitesError         something the driver needs is missing
    ├── IncompatibleFSError        the backing filesystem cannot hold the store
    ├── LayerNotFoundError         (also LookupError) unknown layer id
    ├── LayerExistsError           create() of an id that exists
    ├── LayerInUseError            remove() of a layer other layers stand on
    │   └── LayerMountedError      apply_diff into a mounted layer
    ├── InvalidLayerIDError        (also ValueError) not a valid layer id
    ├── ChainTooLongError          (also ValueError) more ancestors than an engine stacks
    ├── ConversionPendingError     the store's whiteouts are half converted
    └── StoreCorruptError          a file of the store is damaged or tampered with
    ArchiveError                   malformed, truncated or unusable archive input
    └── BreakoutError              an entry would write, link or resolve outside the layer
    ImageError                     a malformed, unsupported or corrupted image archive
    InvalidNameError               (a ValueError) not a usable layer name
    RegistryError                  a registry refused, failed, or sent what it did not promise
    InvalidReferenceError          (a ValueError) not an image reference

Errors of the system floor stay beside their system calls, as ``OSError`` subclasses
(``aufs._sys.mount.MountError``, ``aufs._sys.safefs.SymlinkInPathError``, …), and so do
the CLI's ``UsageError`` and signals private to one module.
"""

from __future__ import annotations

__all__ = [
    "AUFS_NOT_FOUND_MESSAGE",
    "ArchiveError",
    "AufsNotSupportedError",
    "BreakoutError",
    "ChainTooLongError",
    "ConversionPendingError",
    "DriverError",
    "ImageError",
    "IncompatibleFSError",
    "InvalidLayerIDError",
    "InvalidNameError",
    "InvalidReferenceError",
    "LayerExistsError",
    "LayerInUseError",
    "LayerMountedError",
    "LayerNotFoundError",
    "NotSupportedError",
    "PrerequisitesError",
    "RegistryError",
    "StoreCorruptError",
]

AUFS_NOT_FOUND_MESSAGE = "AUFS was not found in /proc/filesystems"


# -- the graph driver's (aufs.graphdriver) ----------------------------------------------

class DriverError(Exception):
    """Base of every error a graph driver raises on purpose."""


class NotSupportedError(DriverError):
    """The driver cannot work on this host."""


class PrerequisitesError(DriverError):
    """A prerequisite of the driver is missing."""


class IncompatibleFSError(DriverError):
    """The backing filesystem is not compatible with the driver."""


class LayerNotFoundError(DriverError, LookupError):
    """No layer with that id."""


class LayerExistsError(DriverError):
    """A layer with that id already exists."""


class LayerInUseError(DriverError):
    """The layer is in use (a parent of other layers, or busy)."""


class InvalidLayerIDError(DriverError, ValueError):
    """Not a valid layer id."""


# -- the aufs driver's own -------------------------------------------------------------

class AufsNotSupportedError(NotSupportedError):
    """Kernel AUFS is not available (the seed's ``ErrAufsNotSupported``)."""

    def __init__(self, message: str = AUFS_NOT_FOUND_MESSAGE) -> None:
        super().__init__(message)


class LayerMountedError(LayerInUseError):
    """apply_diff into a layer whose union is mounted (it would change under its users)."""


class ChainTooLongError(DriverError, ValueError):
    """The layer has more ancestors than the engine can stack."""


class ConversionPendingError(DriverError):
    """The store's whiteouts are half converted; ``aufs convert`` must finish first."""


class StoreCorruptError(DriverError):
    """A file of the store is not what the store writes (damaged, or tampered with):
    the message names the file (and line). Only the layers that stand on it fail."""


# -- archives (aufs.archive) and images (aufs.image) -----------------------------------

class ArchiveError(Exception):
    """Malformed, truncated or unusable archive input."""


class BreakoutError(ArchiveError):
    """An archive entry would write, link or resolve outside the layer."""


class ImageError(Exception):
    """A malformed, unsupported or corrupted image archive."""


class InvalidNameError(ValueError):
    """Not a usable layer name."""


# -- registries (aufs.registry) ----------------------------------------------------------

class RegistryError(Exception):
    """The registry refused, failed or sent something that is not what it promised."""


class InvalidReferenceError(ValueError):
    """Not an image reference."""
