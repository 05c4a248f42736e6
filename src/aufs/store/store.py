"""The layers of a store on disk, and their rules, in one object.

:class:`Store` owns what a layer *is* in the store's directories: it exists iff
``layers/<id>`` does; creating publishes ``layers/<id>`` last; removing renames each of
its paths to ``<path>-removing`` first (``layers/<id>`` before the others: that rename is
the moment the layer stops existing), so a crash never leaves half a layer that looks
whole (:mod:`aufs.store.recover` finishes it). And the one rule of migrated layers:
``diff/<id>`` may be a symlink, left by a migration that could not rename the layer's
data into the store (:meth:`Store.move_in`, :func:`relocate`); :meth:`Store.data_dir`
and :meth:`Store.work` handle it.

It holds no lock and mounts nothing: the driver calls it under the store lock, after
unmounting what must be unmounted.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from aufs._sys.files import rmtree
from aufs.errors import DriverError, LayerNotFoundError, StoreCorruptError
from aufs.store import chain as chains
from aufs.store import children as child_index
from aufs.store import images, layers, refs
from aufs.store.layout import Layout, is_valid_id

__all__ = ["Store", "relocate"]


class Store:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._snapshots: dict[int, chains.Snapshot] = {}  # by thread

    # -- lookups ------------------------------------------------------------------------
    def exists(self, id: str) -> bool:
        return os.path.lexists(self.layout.layers(id))

    def chain(self, id: str, *, ancestors: bool = True) -> list[str]:
        """The layer's ancestors, nearest first, checked (:func:`aufs.store.chain.
        read_verified`: StoreCorruptError naming the file and line if it is damaged);
        FileNotFoundError for an unknown layer. ``ancestors=False``: see there."""
        snap = self._snapshots.get(threading.get_ident()) if self._snapshots else None
        if snap is None or not ancestors:
            return chains.read_verified(self.layout, id, ancestors=ancestors)
        got = snap.verified.get(id)
        if got is None:
            got = snap.verified[id] = chains.read_verified(self.layout, id, snap)
        return list(got)

    def own_chain(self, id: str) -> list[str]:
        """The layer's ancestors as its own file lists them (every id checked), without
        :meth:`chain`'s look at the ancestors' files: for releasing a union, which
        stacks nothing. FileNotFoundError for an unknown layer."""
        return chains.read_chain(self.layout, id)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within it, this thread's lookups read each layer file at most once
        (:class:`aufs.store.chain.Snapshot`): for a command that looks at every layer
        and changes none. Other threads read the disk as always."""
        me = threading.get_ident()
        if me in self._snapshots:  # nested: the outer one goes on
            yield
            return
        self._snapshots[me] = chains.Snapshot(self.layout)
        try:
            yield
        finally:
            del self._snapshots[me]

    def ids(self) -> list[str]:
        return layers.list_ids(self.layout.layers_dir)

    def children(self, id: str) -> list[str]:
        """The layers whose direct parent is ``id``: from the index of
        :mod:`aufs.store.children`, without reading every ``layers/<id>`` while the
        index is fresh."""
        return child_index.children(self.layout, id)

    def protecting_children(self, id: str) -> list[str]:
        """The children that keep ``id`` from being removed: all but those that ``id``'s
        own file names as its ancestors. Such a child is a cycle (``a`` lists ``b``, ``b``
        lists ``a``; a sound store has none), where every layer would protect another and
        none could ever be removed."""
        children = self.children(id)
        if not children:
            return children
        try:
            own = set(chains.read_chain(self.layout, id))
        except (StoreCorruptError, OSError):
            return children  # damaged otherwise: every child protects it
        return [c for c in children if c not in own]

    # -- the migrated-layer rule --------------------------------------------------------
    def relocated(self, id: str) -> bool:
        """Is ``diff/<id>`` a symlink to the layer's data elsewhere (left by migration)?"""
        return os.path.islink(self.layout.diff(id))

    def data_dir(self, id: str) -> str:
        """Where the layer's files are: ``diff/<id>``, or where it points if it is a
        migration's symlink (checked: :func:`aufs.store.chain.relocated_dir`)."""
        rw = self.layout.diff(id)
        return chains.relocated_dir(self.layout, id) if os.path.islink(rw) else rw

    def work(self, id: str) -> str:
        """The union's work dir, which must be on the rw branch's mount: a layer migrated
        by symlink (its data elsewhere) gets one beside its data."""
        if self.relocated(id):
            return self.layout.work_beside(self.data_dir(id))
        return self.layout.work(id)

    def check_move_in(self, id: str, src: str) -> None:
        """Raise unless :meth:`move_in` may take ``src`` into the layer ``id``: the layer
        exists (LayerNotFoundError), ``src`` is a directory, not a symlink, and
        ``diff/<id>`` holds no data: an empty directory, or a symlink (DriverError)."""
        if not self.exists(id):
            raise LayerNotFoundError(f"no such layer: {id}")
        if not os.path.isdir(src) or os.path.islink(src):
            raise DriverError(f"{src}: not a directory")
        diff = self.layout.diff(id)
        if os.path.islink(diff):
            if not chains.may_link_to(src, id):
                raise DriverError(f"layer {id} has its files at {os.readlink(diff)} already")
        elif os.path.isdir(diff) and os.listdir(diff):
            raise DriverError(f"layer {id} has files already ({diff})")

    def move_in(self, id: str, src: str) -> None:
        """Make the directory ``src`` (an absolute path) the files of the layer ``id``:
        renamed onto ``diff/<id>``; where that fails (another filesystem, a mount in the
        way) ``diff/<id>`` becomes a symlink to ``src`` — only if ``src`` is where a
        migration finds a layer (:func:`aufs.store.chain.may_link_to`), the one symlink
        the store follows; otherwise DriverError. See :func:`relocate`."""
        relocate(src, self.layout.diff(id), link=chains.may_link_to(src, id))

    # -- create and remove --------------------------------------------------------------
    def create(self, id: str, chain: list[str]) -> None:
        """Make ``diff/<id>`` and ``mnt/<id>`` (0755) and publish ``layers/<id>`` with the
        parent ``chain``; on failure what this call made goes again. An existing
        ``diff/<id>`` is kept, as Docker's MkdirAll does: migration moves a layer's
        files there before registering it."""
        lay = self.layout
        made = [p for p in (lay.diff(id), lay.mnt(id)) if not os.path.lexists(p)]
        refs.clear(lay.refs(id))
        if not child_index.fresh(lay):
            child_index.rebuild(lay)  # once for a store we did not index (or after a crash)
        try:
            for path in made:
                os.mkdir(path)
                os.chmod(path, 0o755)  # a layer's root is 0755 whatever the umask
            if chain:
                child_index.added(lay, chain[0], id)  # before the layer exists
            layers.write_chain(lay.layers(id), chain)  # publishes the layer
        except BaseException:
            for path in made:
                with contextlib.suppress(OSError):
                    rmtree(path)
            raise
        child_index.seen(lay)

    def remove(self, id: str) -> None:
        """Remove the layer's files by renaming them to ``<path>-removing`` first (nothing
        of it may be mounted)."""
        lay = self.layout
        parent = chains.first_parent(lay, id)  # leniently: a damaged layer goes too
        indexed = child_index.fresh(lay)
        # The rename of layers/<id> is the moment the layer stops existing.
        os.replace(lay.layers(id), lay.removing(lay.layers(id)))
        doomed = []
        for path in (lay.mnt(id), lay.diff(id), lay.work(id)):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, lay.removing(path))
                doomed.append(lay.removing(path))
        refs.clear(lay.refs(id))
        images.forget(lay, id)
        for path in doomed:
            rmtree(path)
        rmtree(lay.removing(lay.layers(id)))  # a damaged one may be a directory
        if indexed:
            child_index.removed(lay, parent if parent and is_valid_id(parent) else "", id)
            child_index.seen(lay)


def relocate(old: str, new: str, *, link: bool = True) -> None:
    """Rename ``old`` to ``new``; if that fails, symlink ``new`` -> ``old`` (if ``link``,
    else DriverError).

    ``new`` may be a symlink (an earlier run could not rename: it is replaced) or an
    empty directory (the layer was registered first: the rename replaces it). A
    non-empty directory at ``new`` is another layer's data and raises DriverError.
    """
    if os.path.islink(new):
        if not link:  # the layer's data, moved in from elsewhere by a migration
            raise DriverError(f"unable to relocate {old} to {new}: {new} is a symlink to "
                              f"{os.readlink(new)}")
        os.unlink(new)
    try:
        os.rename(old, new)
    except OSError as rename_err:
        if not link:
            raise DriverError(
                f"unable to relocate {old} to {new}: rename: {rename_err.strerror}; a "
                f"symlink is kept only for …/graph/<id>/layer or …/containers/<id>/rw "
                f"of the same id") from rename_err
        if os.path.isdir(new) and not os.path.islink(new):
            try:
                os.rmdir(new)  # the empty diff dir of the layer just registered
            except OSError as rmdir_err:
                raise DriverError(
                    f"unable to relocate {old} to {new}: rename: {rename_err.strerror}; "
                    f"{new} is in the way: {rmdir_err.strerror}") from rename_err
        try:
            os.symlink(old, new)
        except OSError as link_err:
            raise DriverError(
                f"unable to relocate {old} to {new}: rename: {rename_err.strerror}; "
                f"symlink: {link_err.strerror}") from link_err
