"""Every path of a store, in one place. Nothing else joins store paths.

::

    ROOT/
    ├── layers/<id>     parent chain, nearest first, one id a line (Docker's format)
    ├── diff/<id>       the layer's own files (the rw branch of its union)
    ├── mnt/<id>        where its union is mounted
    └── .aufs/          ours, invisible to Docker
        ├── store.json  whiteout format, engine, version
        ├── lock        flock: one writer of the store at a time
        ├── refs/<id>   get/put count, shared by every process
        ├── work/<id>   overlayfs work dir (same filesystem as diff/)
        ├── l/          short symlinks to diff dirs (overlay, old kernels, long chains)
        ├── staging/    things being built; renamed into place when whole
        ├── incomplete/<id>  pid of the import applying layer <id> (aufs.store.incomplete)
        ├── empty/      an empty lower branch, for a layer whose opaque root hides its parents
        ├── names.json  names given to layers (``aufs import --name``): {name: id}
        ├── images/<id>.json  the config and manifest of the image whose top layer is <id>
        ├── tar-split/<id>  how to rebuild the tar <id> was applied from, byte for byte
        ├── blobs.json  where layers' blobs are on registries (pull/push): {diff id: [...]}
        ├── convert.json  journal of an unfinished ``aufs convert`` (aufs.convert)
        ├── convert/<id>.json  a layer's directory times while it is being converted
        └── attic/<id>/ AUFS housekeeping set aside while the store is in overlay format
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from aufs.errors import InvalidLayerIDError

REMOVING_SUFFIX = "-removing"
MAX_ID_LEN = 128
_ID_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_ID_LEN}}}")


def validate_id(layer_id: object) -> str:
    """Return ``layer_id`` if it is a valid layer id, else raise InvalidLayerIDError."""
    if (
        not isinstance(layer_id, str)
        or not _ID_RE.fullmatch(layer_id)
        or layer_id in (".", "..")
        or layer_id.endswith(REMOVING_SUFFIX)
    ):
        raise InvalidLayerIDError(f"invalid layer id: {layer_id!r}")
    return layer_id


def is_valid_id(layer_id: object) -> bool:
    try:
        validate_id(layer_id)
    except InvalidLayerIDError:
        return False
    return True


class Layout(NamedTuple):
    """The store's paths below ``root``. Immutable, compared and hashed as ``(root,)``.
    (A NamedTuple, not a dataclass: importing dataclasses costs every command 5 ms.)"""

    root: str

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Layout:
        return cls(os.path.abspath(os.fspath(root)))

    # Docker's three directories.
    @property
    def layers_dir(self) -> str:
        return f"{self.root}/layers"

    @property
    def diff_dir(self) -> str:
        return f"{self.root}/diff"

    @property
    def mnt_dir(self) -> str:
        return f"{self.root}/mnt"

    def layers(self, layer_id: str) -> str:
        return f"{self.root}/layers/{layer_id}"

    def diff(self, layer_id: str) -> str:
        return f"{self.root}/diff/{layer_id}"

    def mnt(self, layer_id: str) -> str:
        return f"{self.root}/mnt/{layer_id}"

    def removing(self, path: str) -> str:
        return path + REMOVING_SUFFIX

    # Ours.
    @property
    def private_dir(self) -> str:
        return f"{self.root}/.aufs"

    @property
    def meta_file(self) -> str:
        return f"{self.root}/.aufs/store.json"

    @property
    def lock_file(self) -> str:
        return f"{self.root}/.aufs/lock"

    @property
    def refs_dir(self) -> str:
        return f"{self.root}/.aufs/refs"

    def refs(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/refs/{layer_id}"

    @property
    def work_dir(self) -> str:
        return f"{self.root}/.aufs/work"

    def work(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/work/{layer_id}"

    @staticmethod
    def work_beside(data_dir: str) -> str:
        """The work dir of a layer migrated by symlink (its data outside the store):
        overlayfs needs it on the rw branch's mount."""
        head, tail = os.path.split(data_dir)
        return f"{head}/.{tail}.aufs-work"

    @property
    def links_dir(self) -> str:
        return f"{self.root}/.aufs/l"

    def link(self, short: str) -> str:
        return f"{self.root}/.aufs/l/{short}"

    @property
    def staging_dir(self) -> str:
        return f"{self.root}/.aufs/staging"

    def staging(self, name: str) -> str:
        return f"{self.root}/.aufs/staging/{name}"

    @property
    def incomplete_dir(self) -> str:
        return f"{self.root}/.aufs/incomplete"

    def incomplete(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/incomplete/{validate_id(layer_id)}"

    @property
    def empty_dir(self) -> str:
        return f"{self.root}/.aufs/empty"

    @property
    def names_file(self) -> str:
        return f"{self.root}/.aufs/names.json"

    # Images (aufs.store.images): config and manifest per top layer; tar-split per layer.
    @property
    def images_dir(self) -> str:
        return f"{self.root}/.aufs/images"

    def image(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/images/{layer_id}.json"

    @property
    def tar_split_dir(self) -> str:
        return f"{self.root}/.aufs/tar-split"

    def tar_split(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/tar-split/{layer_id}"

    # Registries (aufs.registry.blobinfo).
    @property
    def blob_sources_file(self) -> str:
        """Where layers' blobs were seen on registries (``aufs.registry.blobinfo``)."""
        return f"{self.root}/.aufs/blobs.json"

    # Format conversion (aufs.convert).
    @property
    def convert_journal(self) -> str:
        return f"{self.root}/.aufs/convert.json"

    @property
    def convert_dir(self) -> str:
        return f"{self.root}/.aufs/convert"

    def convert_manifest(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/convert/{layer_id}.json"

    @property
    def attic_dir(self) -> str:
        return f"{self.root}/.aufs/attic"

    def attic(self, layer_id: str) -> str:
        return f"{self.root}/.aufs/attic/{layer_id}"

    @property
    def children_dir(self) -> str:
        """The child index (:mod:`aufs.store.children`)."""
        return f"{self.root}/.aufs/children"

    def own_dirs(self) -> tuple[str, ...]:
        """Every directory inside ``.aufs/``: never a symlink nor anything but a
        directory (:mod:`aufs.store.dirs`); the top ones are :meth:`store_dirs`."""
        return (*self.private_dirs()[1:], self.incomplete_dir, self.empty_dir,
                self.images_dir, self.tar_split_dir, self.convert_dir, self.attic_dir,
                self.children_dir)

    def top_dirs(self) -> tuple[str, ...]:
        return (self.mnt_dir, self.diff_dir, self.layers_dir)

    def store_dirs(self) -> tuple[str, ...]:
        """The store's top directories: none may be a symlink or anything but a
        directory (the store is refused whole); those inside ``.aufs/`` are
        :meth:`own_dirs`."""
        return (*self.top_dirs(), self.private_dir)

    def private_dirs(self) -> tuple[str, ...]:
        return (self.private_dir, self.refs_dir, self.work_dir, self.links_dir,
                self.staging_dir)
