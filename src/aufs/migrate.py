"""Migration of a pre-0.7 Docker graph into the store (the seed's ``Migrate``).

Before 0.7 Docker kept each image's files in ``graph/<id>/layer`` (metadata in
``graph/<id>/json``) and each container's changes in ``containers/<id>/rw``
(``config.json`` names its image). Layers are moved into ``diff/<id>`` — renamed where
possible, symlinked where not (a later run replaces such a symlink by a rename) — then
registered with :meth:`Driver.create`, parents first. Each container gets an
``<id>-init`` layer between it and its image, prepared by ``setup_init(mounted_path)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aufs.graphdriver import DriverError

if TYPE_CHECKING:
    from aufs.driver import Driver


@dataclass(frozen=True, slots=True)
class _Meta:
    id: str
    parent: str
    image: str


def _load(path: str) -> _Meta:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise DriverError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DriverError(f"{path}: not a JSON object")
    return _Meta(id=str(raw.get("id", "")), parent=str(raw.get("parent", "") or ""),
                 image=str(raw.get("Image", "") or ""))


def relocate(old: str, new: str) -> None:
    """Rename ``old`` to ``new``; if that fails, symlink ``new`` -> ``old``.

    A symlink already at ``new`` is an earlier failed rename: it is replaced.
    """
    if os.path.islink(new):
        os.unlink(new)
    try:
        os.rename(old, new)
    except OSError as rename_err:
        try:
            os.symlink(old, new)
        except OSError as link_err:
            raise DriverError(
                f"unable to relocate {old} to {new}: rename: {rename_err.strerror}; "
                f"symlink: {link_err.strerror}") from link_err


def migrate(driver: Driver, path: str, setup_init: Callable[[str], object]) -> None:
    """Move the pre-0.7 graph at ``path`` into ``driver``'s store; no ``graph/``: no-op."""
    if not os.path.isdir(os.path.join(path, "graph")):
        return
    repositories = os.path.join(path, "repositories")
    if os.path.lexists(repositories):
        os.rename(repositories, repositories + "-aufs")
    with driver.root_unbound():
        _migrate_images(driver, os.path.join(path, "graph"))
    _migrate_containers(driver, os.path.join(path, "containers"), setup_init)


def _migrate_images(driver: Driver, graph: str) -> None:
    metas: dict[str, _Meta] = {}
    for name in sorted(os.listdir(graph)):
        if os.path.isdir(os.path.join(graph, name)) and os.path.exists(
                os.path.join(graph, name, "layer")):
            meta = _load(os.path.join(graph, name, "json"))
            metas[name] = _Meta(id=meta.id or name, parent=meta.parent, image=meta.image)
    done: set[str] = set()
    for image_id in metas:
        _migrate_image(driver, graph, metas, image_id, done)


def _migrate_image(driver: Driver, graph: str, metas: dict[str, _Meta], image_id: str,
                   done: set[str]) -> None:
    # Iterative parents-first walk: a deep chain must not hit the recursion limit.
    chain = []
    current: str | None = image_id
    while current is not None and current in metas and current not in done:
        if current in chain:
            raise DriverError(f"image {current} is its own ancestor")
        chain.append(current)
        parent = metas[current].parent
        current = parent or None
    for layer_id in reversed(chain):
        meta = metas[layer_id]
        if not driver.exists(layer_id):
            relocate(os.path.join(graph, layer_id, "layer"), driver.layout.diff(layer_id))
            driver.create(layer_id, meta.parent)
        done.add(layer_id)


def _migrate_containers(driver: Driver, containers: str,
                        setup_init: Callable[[str], object]) -> None:
    try:
        names = sorted(os.listdir(containers))
    except FileNotFoundError:
        return
    for cid in names:
        rw = os.path.join(containers, cid, "rw")
        if not (os.path.isdir(os.path.join(containers, cid)) and os.path.exists(rw)):
            continue
        if driver.exists(cid):
            continue
        meta = _load(os.path.join(containers, cid, "config.json"))
        with driver.root_unbound():
            relocate(rw, driver.layout.diff(cid))
        init_id = f"{cid}-init"
        if not driver.exists(init_id):
            driver.create(init_id, meta.image)
        init_path = driver.get(init_id)
        try:
            setup_init(init_path)
        finally:
            driver.put(init_id)
        driver.create(cid, init_id)
