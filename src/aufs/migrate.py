"""Migration of a pre-0.7 Docker graph into the store (the seed's ``Migrate``).

Before 0.7 Docker kept each image's files in ``graph/<id>/layer`` (metadata in
``graph/<id>/json``, whose ``parent`` names the parent image) and each container's
changes in ``containers/<id>/rw`` (``config.json``'s ``Image`` names its image). Images
are registered parents first, whatever order the directory lists them in; each
container gets an ``<id>-init`` layer between it and its image, prepared by
``setup_init(mounted_path)``; ``repositories`` becomes ``repositories-aufs``. A path
without ``graph/`` is left alone.

It is a user of the public API (docs/API.md): the driver's ``exists``, ``create``,
``get``, ``put`` and ``move_in``, the id rule of :func:`aufs.graphdriver.validate_id`
and the errors; nothing of the store's insides (a contract in pyproject.toml says so).

Moving data (:meth:`aufs.Driver.move_in`, one call a layer):

- A layer's directory is *renamed* into ``diff/<id>`` where possible and *symlinked*
  there where not (another filesystem, a mount in the way). A later run finds the old
  directory still in place, drops the symlink and tries the rename again.
- Everything is checked before anything moves: ids, metadata, parents, images, that
  each layer is a directory. A graph that cannot be migrated whole raises
  :class:`~aufs.graphdriver.DriverError` untouched.
- A layer is registered (``create``, which makes an empty ``diff/<id>``) *before* its
  data is moved onto that empty directory by one ``rename``. A kill in between leaves a
  registered layer whose data is still in the old graph; the next run moves it. A
  container is registered only after ``setup_init`` returned, so an interrupted run
  prepares its init layer again.
- Pre-0.7 layers are in AUFS format; in a store that keeps overlay whiteouts
  ``move_in`` converts them (as ``aufs convert`` does, housekeeping set aside) before
  they move in.
- Renames into the store need the store root's private bind released (``move_in``
  does so under the store lock): a bind is another mount, across which ``rename(2)``
  fails with ``EXDEV``. Where a union of the store is mounted the bind stays, and the
  fallback is a symlink.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aufs._sys import safefs
from aufs.errors import DriverError, InvalidLayerIDError
from aufs.graphdriver import validate_id

REPOSITORIES = "repositories"
MIGRATED_REPOSITORIES = "repositories-aufs"


class Driver(Protocol):
    """What migration needs of the store it moves the graph into: public methods of
    :class:`aufs.Driver` (docs/API.md)."""

    def exists(self, id: str) -> bool: ...
    def create(self, id: str, parent: str = "") -> None: ...
    def get(self, id: str, mount_label: str = "") -> str: ...
    def put(self, id: str) -> None: ...
    def move_in(self, id: str, path: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Image:
    id: str
    parent: str
    layer: str  # graph/<id>/layer


@dataclass(frozen=True, slots=True)
class _Container:
    id: str
    image: str
    rw: str  # containers/<id>/rw
    registered: bool


def migrate(driver: Driver, path: str, setup_init: Callable[[str], object]) -> None:
    """Move the pre-0.7 graph at ``path`` into ``driver``'s store; no ``graph/``: no-op."""
    graph = os.path.join(path, "graph")
    if not os.path.isdir(graph):
        return
    images = _scan_images(driver, graph)
    containers = _scan_containers(driver, os.path.join(path, "containers"), images)
    _migrate_repositories(path)
    # Registered first, then the data moved onto its empty diff (a kill in between: the
    # next run finds the data still in the graph); move_in converts its AUFS whiteouts.
    for image in _parents_first(images):
        if not driver.exists(image.id):
            driver.create(image.id, image.parent)
        driver.move_in(image.id, image.layer)
    for ctr in containers:
        if not ctr.registered:
            _register_container(driver, ctr, setup_init)
        driver.move_in(ctr.id, ctr.rw)


def _migrate_repositories(path: str) -> None:
    name = os.path.join(path, REPOSITORIES)
    with contextlib.suppress(FileNotFoundError):
        os.rename(name, os.path.join(path, MIGRATED_REPOSITORIES))


def _load(path: str) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise DriverError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DriverError(f"{path}: not a JSON object")
    return raw


def _text(raw: dict[str, object], key: str, where: str) -> str:
    value = raw.get(key) or ""
    if not isinstance(value, str):
        raise DriverError(f"{where}: {key!r} is not a string")
    return value


def _check_id(layer_id: str, where: str) -> None:
    try:
        validate_id(layer_id)
    except InvalidLayerIDError:
        raise InvalidLayerIDError(f"{where}: invalid layer id {layer_id!r}") from None


def _check_dir(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        raise DriverError(f"{path}: not a directory (a layer's files)")


def _scan_images(driver: Driver, graph: str) -> dict[str, _Image]:
    """Images whose layer directory is still in the graph (the seed's rule): new ones,
    and ones an earlier run could only symlink."""
    images: dict[str, _Image] = {}
    for name in sorted(os.listdir(graph)):
        layer = os.path.join(graph, name, "layer")
        if not (os.path.isdir(os.path.join(graph, name)) and os.path.exists(layer)):
            continue
        _check_id(name, layer)
        _check_dir(layer)
        meta_path = os.path.join(graph, name, "json")
        raw = _load(meta_path)
        # The directory names the image: the data to move is there, whatever "id" says.
        parent = _text(raw, "parent", meta_path)
        if parent:
            _check_id(parent, meta_path)
        images[name] = _Image(id=name, parent=parent, layer=layer)
    for image in images.values():
        if image.parent and image.parent not in images and not driver.exists(image.parent):
            raise DriverError(f"image {image.id}: its parent {image.parent} is neither in "
                              f"{graph} nor in the store")
    return images


def _parents_first(images: dict[str, _Image]) -> list[_Image]:
    order: list[_Image] = []
    placed: set[str] = set()
    for start in images:
        chain: list[str] = []
        current = start
        while current in images and current not in placed:
            if current in chain:
                raise DriverError(f"image {current} is its own ancestor")
            chain.append(current)
            current = images[current].parent
        for image_id in reversed(chain):  # iterative: deep chains need no recursion
            order.append(images[image_id])
            placed.add(image_id)
    return order


def _scan_containers(driver: Driver, containers: str,
                     images: dict[str, _Image]) -> list[_Container]:
    try:
        names = sorted(os.listdir(containers))
    except FileNotFoundError:
        return []
    out: list[_Container] = []
    for name in names:
        rw = os.path.join(containers, name, "rw")
        if not (os.path.isdir(os.path.join(containers, name)) and os.path.exists(rw)):
            continue
        _check_id(name, rw)
        _check_dir(rw)
        registered = driver.exists(name)
        image = ""
        if not registered:
            config = os.path.join(containers, name, "config.json")
            image = _text(_load(config), "Image", config)
            if not image:
                raise DriverError(f"{config}: names no image")
            _check_id(image, config)
            _check_id(f"{name}-init", rw)
            if image not in images and not driver.exists(image):
                raise DriverError(f"container {name}: its image {image} is neither in the "
                                  f"graph nor in the store")
        out.append(_Container(id=name, image=image, rw=rw, registered=registered))
    return out


def _register_container(driver: Driver, ctr: _Container,
                        setup_init: Callable[[str], object]) -> None:
    init_id = f"{ctr.id}-init"
    if not driver.exists(init_id):
        driver.create(init_id, ctr.image)
    init_path = driver.get(init_id)
    try:
        setup_init(init_path)
    finally:
        driver.put(init_id)
    driver.create(ctr.id, init_id)


# Docker 1.7's graph.SetupInitLayer: the mount points and files every container needs.
INIT_LAYER_ENTRIES: tuple[tuple[str, str], ...] = (
    ("dev/pts", "dir"), ("dev/shm", "dir"), ("proc", "dir"), ("sys", "dir"),
    (".dockerinit", "file"), (".dockerenv", "file"), ("etc/resolv.conf", "file"),
    ("etc/hosts", "file"), ("etc/hostname", "file"), ("dev/console", "file"),
    ("etc/mtab", "/proc/mounts"),  # a symlink to that target
)


def setup_init_layer(root: str) -> None:
    """Docker's ``SetupInitLayer``, the ``setup_init`` Docker passed to ``Migrate``: in the
    mounted init layer at ``root``, make each of :data:`INIT_LAYER_ENTRIES` that is not
    there. As Docker does, a file or symlink standing on the way (or in the place) is
    unlinked first; unlike Docker's path joins, nothing is reached through a symlink."""
    root_fd = os.open(root, safefs.O_DIR)
    try:
        for rel, kind in INIT_LAYER_ENTRIES:
            *parents, leaf = rel.split("/")
            fd = os.dup(root_fd)
            try:
                for comp in parents:
                    _unlink_non_dir(fd, comp)
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    sub = os.open(comp, safefs.O_DIR, dir_fd=fd)
                    os.close(fd)
                    fd = sub
                _unlink_non_dir(fd, leaf)
                try:
                    os.stat(leaf, dir_fd=fd, follow_symlinks=False)
                    continue  # a directory is there already
                except FileNotFoundError:
                    pass
                if kind == "dir":
                    os.mkdir(leaf, 0o755, dir_fd=fd)
                elif kind == "file":
                    os.close(os.open(leaf, safefs.O_NEW, 0o755, dir_fd=fd))
                else:
                    os.symlink(kind, leaf, dir_fd=fd)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def _unlink_non_dir(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(name, dir_fd=dir_fd)
