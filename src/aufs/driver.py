"""The AUFS graph driver: Docker's ``daemon/graphdriver/aufs`` API over a union engine.

The driver validates ids, holds the store lock and calls the store, engine and archive
modules. Store paths come from ``Layout``; its own system calls are the checks for a
mount and the directories of a layer it creates and removes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING

from aufs import options as options_mod
from aufs._sys.files import ensure_dir, rmtree
from aufs._sys.mountstate import MountState, has_mount, mount_state
from aufs.errors import (
    DriverError,
    LayerExistsError,
    LayerInUseError,
    LayerMountedError,
    LayerNotFoundError,
    StoreCorruptError,
)
from aufs.graphdriver.protocol import Status
from aufs.store import chain as chains
from aufs.store import dirs, layers, meta, private, refs
from aufs.store.layout import Layout, is_valid_id, validate_id
from aufs.store.lock import StoreLock
from aufs.store.store import Store
from aufs.whiteout import WhiteoutFormat, get_format, root_is_opaque

if TYPE_CHECKING:
    from aufs.archive.change import Change
    from aufs.union.base import Branches, UnionEngine

# The engines, the mount calls and conversion are imported where they are used: a command
# that only reads the store (aufs ls) needs none of them (open_for_reading).


def init(root: str | os.PathLike[str], options: Sequence[str] = ()) -> Driver:
    """Open (creating if needed) the store at ``root`` — the seed's ``Init``."""
    return _init(root, options, None)


def _init(root: str | os.PathLike[str], options: Sequence[str],
          lock: StoreLock | None) -> Driver:
    """:func:`init`, under ``lock`` if given (a reader's own, which may be held already)."""
    from aufs._sys import fsinfo
    from aufs._sys import mount as sysmount
    from aufs.store import recover
    from aufs.union import select

    opts = options_mod.parse(options)
    layout = Layout.at(os.path.realpath(os.fspath(root)))
    _require_dir_root(layout.root)
    try:
        os.makedirs(layout.root, 0o755, exist_ok=True)
    except OSError as exc:
        raise DriverError(f"cannot create the store root {layout.root}: {exc.strerror}") from exc
    if not os.access(layout.root, os.W_OK) or fsinfo.read_only(layout.root):
        raise DriverError(f"the store root {layout.root} is read-only")
    dirs.require_sound(layout)
    for d in (*layout.top_dirs(), *layout.private_dirs()):
        ensure_dir(d)
    magic = fsinfo.fs_magic(layout.root)
    lock = lock or StoreLock(layout.lock_file, layout.private_dirs()[1:])
    with lock.hold():
        # Bind first: every mount of ours, the engine probes' included, then lives inside
        # the bind, where recovery can see it (a later bind would hide it).
        bound = os.geteuid() == 0 and sysmount.bind_private(layout.root)
        try:
            recover.finish(layout)
            meta.check_not_pending(layout)  # half-converted whiteouts: no engine reads them
            stored = meta.read(layout.meta_file)
            if stored is not None:
                store_format: str | None = stored.whiteouts
            elif layers.list_ids(layout.layers_dir):
                store_format = "aufs"  # a Docker aufs store: no metadata, AUFS whiteouts
            else:
                store_format = None
            engine, fmt = select.choose(opts.engine, layout, magic, store_format)
            new_meta = meta.StoreMeta(whiteouts=fmt, engine=engine.name)
            if (stored is None and store_format is None) or (
                    stored is not None and stored != new_meta):
                meta.write(layout.meta_file, new_meta)
        except BaseException:
            if bound:
                _release_bind(layout.root)
            raise
    return Driver(layout, engine, get_format(fmt), fsinfo.fs_name(magic), lock)


def open_for_reading(root: str | os.PathLike[str], options: Sequence[str] = ()) -> Driver:
    """Open an existing store for commands that only read it (``ls``, ``changes``,
    ``diff``, ``size``, ``export``): no engine probe, no private bind mount, no recovery —
    a reader needs none of them, and they cost a command more than its own work. The first use
    of the engine (a diff against a layer that is not the parent mounts both) prepares
    the store as :func:`init` does. A root that is not a store of ours yet, or one that
    :func:`init` would refuse, goes through :func:`init`.
    """
    opts = options_mod.parse(options)
    layout = Layout.at(os.path.realpath(os.fspath(root)))
    _require_dir_root(layout.root)
    dirs.require_sound(layout)
    try:
        stored = meta.read(layout.meta_file)
    except ValueError:
        stored = None
    if (stored is None or not os.path.isdir(layout.layers_dir)
            or os.path.lexists(layout.convert_journal)):
        return init(layout.root, options)
    engine_options = [f"aufs.engine={opts.engine}"]
    lock = StoreLock(layout.lock_file, layout.private_dirs()[1:])

    def prepare() -> UnionEngine:
        # Under the reader's own lock, which the caller may hold (a get inside a naive
        # diff): flock on a second open of the file would wait for ourselves.
        return _init(layout.root, engine_options, lock).engine

    return Driver(layout, prepare, get_format(stored.whiteouts), None, lock)


def _release_bind(root: str) -> None:
    """Undo init's bind of ``root`` onto itself, if nothing is mounted below it."""
    from aufs._sys import mountinfo

    entries = mountinfo.read()
    if any(e.mountpoint.startswith(root + "/") for e in entries):
        return
    # Only the bind that init made is ours to undo: a filesystem mounted at the root
    # by the user (a loop device, a tmpfs) stays.
    if os.geteuid() == 0 and mountinfo.self_bind_at(entries, root) is not None:
        from aufs._sys import mount as sysmount

        # Under the store lock nothing can be mounted below meanwhile, so a lazy
        # detach releases only the bind itself; open fds (our lock's) stay valid.
        with contextlib.suppress(OSError):
            sysmount.detach(root)


def _require_dir_root(root: str) -> None:
    """A store root that exists must be a directory (a file there is one clear line)."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DriverError(f"the store root {root} is not a directory")


class Driver:
    """A layer store. Create it with :func:`aufs.init`."""

    def __init__(self, layout: Layout, engine: UnionEngine | Callable[[], UnionEngine],
                 whiteouts: WhiteoutFormat, backing_fs: str | None, lock: StoreLock) -> None:
        """``engine``, or a function that prepares the store and returns its engine when
        it is first needed (:func:`open_for_reading`); ``backing_fs`` None: asked
        (``statfs``, through ctypes) when first wanted."""
        self.layout = layout
        self._engine: UnionEngine | None = None
        self._prepare: Callable[[], UnionEngine] | None = None
        if callable(engine):
            self._prepare = engine
        else:
            self._engine = engine
        self.whiteouts = whiteouts
        self._backing_fs = backing_fs
        self.store = Store(layout)
        self._lock = lock
        self._private_removed = False  # cleanup removed .aufs/ (a store not ours)
        # Record the tar of an apply into an empty layer (export gives the same bytes).
        # A caller that keeps its own record turns it off: dockerd, through the plugin.
        self.keep_tar_split = True

    @property
    def backing_fs(self) -> str:
        """Docker's name of the filesystem the store is on (``extfs``, ``xfs``, ...)."""
        if self._backing_fs is None:
            from aufs._sys import fsinfo

            self._backing_fs = fsinfo.fs_name(fsinfo.fs_magic(self.layout.root))
        return self._backing_fs

    @property
    def engine(self) -> UnionEngine:
        if self._engine is None:
            assert self._prepare is not None
            self._engine = self._prepare()
        return self._engine

    # -- identity -----------------------------------------------------------------------
    def __str__(self) -> str:
        return "aufs"

    def __repr__(self) -> str:
        engine = self._engine.name if self._engine is not None else "(not probed yet)"
        return f"<aufs.Driver root={self.root!r} engine={engine}>"

    @property
    def root(self) -> str:
        return self.layout.root

    def root_path(self) -> str:
        return self.layout.root

    # -- lookups ------------------------------------------------------------------------
    def exists(self, id: str) -> bool:
        return is_valid_id(id) and self.store.exists(id)

    def parents(self, id: str) -> list[str]:
        """The layer's ancestors, nearest first (the content of ``layers/<id>``), checked
        (:func:`aufs.store.chain.read_verified`): StoreCorruptError if damaged."""
        validate_id(id)
        try:
            return self.store.chain(id)
        except FileNotFoundError:
            raise LayerNotFoundError(f"no such layer: {id}") from None

    def ids(self) -> list[str]:
        return self.store.ids()

    def mounted(self, id: str) -> bool:
        """True if the layer's union is mounted at ``mnt/<id>``."""
        validate_id(id)
        return has_mount(self.layout.mnt(id), self.layout.mnt_dir)

    def refcount(self, id: str) -> int:
        validate_id(id)
        return refs.read(self.layout.refs(id))

    def _branches(self, id: str, chain: list[str], label: str = "",
                  dirs: dict[str, os.stat_result] | None = None) -> Branches:
        from aufs.union.base import Branches

        lay = self.layout
        return Branches(target=lay.mnt(id), rw=lay.diff(id),
                        lowers=self._visible_lowers(id, chain, dirs),
                        work=self.store.work(id), label=label)

    def _visible_lowers(self, id: str, chain: list[str],
                        dirs: dict[str, os.stat_result] | None = None) -> tuple[str, ...]:
        """The parents' diffs that show through ``id``: none below an opaque root (the
        engines ignore an opaque root, so the chain is cut here). A layer whose own root
        is opaque gets one empty lower branch. ``dirs``: each data directory's stat, if
        known (:func:`aufs.store.chain.check_dirs`)."""
        lay = self.layout
        stats = dirs or {}
        lowers: list[str] = []
        if not root_is_opaque(lay.diff(id), stats.get(id)):
            for parent in chain:
                lowers.append(lay.diff(parent))
                if root_is_opaque(lowers[-1], stats.get(parent)):
                    break
        if not lowers:
            ensure_dir(lay.empty_dir)
            lowers.append(lay.empty_dir)
        return tuple(lowers)

    # -- lifecycle ----------------------------------------------------------------------
    def create(self, id: str, parent: str = "") -> None:
        validate_id(id)
        if parent:
            validate_id(parent)
        with self._lock.hold():
            if self.store.exists(id):
                raise LayerExistsError(f"layer already exists: {id}")
            chain = [parent, *self.parents(parent)] if parent else []
            self._discard(self.layout.work(id))  # a leftover of a half-removed layer
            self.store.create(id, chain)

    def _discard(self, path: str) -> None:
        """Remove a leftover path of a half-created or half-removed layer."""
        if has_mount(path, os.path.dirname(path)):
            self.engine.unmount(path)
        rmtree(path)

    def remove(self, id: str) -> None:
        validate_id(id)
        with self._lock.hold():
            if not self.store.exists(id):
                raise LayerNotFoundError(f"no such layer: {id}")
            children = self.store.protecting_children(id)
            if children:
                names = ", ".join(children[:3])
                raise LayerInUseError(f"layer {id} is the parent of: {names}")
            self._unmount(id)
            self.engine.forget(self.layout.diff(id))
            self.store.remove(id)

    # -- mounting -----------------------------------------------------------------------
    def get(self, id: str, mount_label: str = "") -> str:
        validate_id(id)
        lay = self.layout
        with self._lock.hold():
            try:  # the ancestors' data directories are checked below, not their files
                chain = self.store.chain(id, ancestors=False)
            except FileNotFoundError:
                raise LayerNotFoundError(f"no such layer: {id}") from None
            with refs.Count(lay.refs(id)) as ref:
                if not chain:  # diff/<id> itself is handed out: a directory of the store
                    problem = chains.dir_problem(lay, [id])
                    if problem:
                        raise StoreCorruptError(problem)
                    ref.set(ref.value + 1)
                    return lay.diff(id)
                target = lay.mnt(id)
                count = ref.value
                mounted_now = False
                dirs = chains.check_dirs(lay, id, chain)  # no mount follows a symlink out
                state = mount_state(target, lay.mnt_dir)
                branches = self._branches(id, chain, mount_label, dirs)
                if state is MountState.DEAD or (
                        state is MountState.LIVE and not self.engine.matches(branches)):
                    # The FUSE daemon behind the union died, or a process was killed
                    # half way through stacking it: drop that mount, mount anew.
                    self._engine_unmount(id, target, chain)
                    state = MountState.NONE
                if state is MountState.NONE:
                    count = 0  # the mount table is the truth: a dead holder's count is void
                    ensure_dir(target)
                    if ref.mounting:  # a get died mounting: its daemon may still be starting
                        self.engine.clear(target)
                    ref.mark_mounting()
                    try:
                        self.engine.mount(branches)
                    except BaseException:
                        ref.set(0)
                        raise
                    mounted_now = True
                try:
                    ref.set(count + 1)
                except BaseException:
                    if mounted_now:
                        self._engine_unmount(id, target, chain)
                    raise
                return target

    def put(self, id: str) -> None:
        validate_id(id)
        lay = self.layout
        with self._lock.hold():
            try:  # its own file only: a put stacks nothing (a layer 100 deep: 100 lstats)
                chain = self.store.own_chain(id)
            except FileNotFoundError:
                raise LayerNotFoundError(f"no such layer: {id}") from None
            target = lay.mnt(id)
            with refs.Count(lay.refs(id)) as ref:
                count = ref.value
                starting = ref.mounting  # a get died mounting (see refs)
                if count > 1:
                    state = mount_state(target, lay.mnt_dir) if chain else MountState.LIVE
                    if state is MountState.LIVE:  # other holders remain
                        ref.set(count - 1)
                        return
                    mounted = state is MountState.DEAD
                else:  # the last holder: no need to ask a FUSE daemon anything
                    mounted = bool(chain) and has_mount(target, lay.mnt_dir)
                ref.set(0)
            if mounted:
                self._engine_unmount(id, target, chain)
            elif starting:
                self.engine.clear(target)

    def _unmount(self, id: str) -> None:
        target = self.layout.mnt(id)
        if has_mount(target, self.layout.mnt_dir):
            self._engine_unmount(id, target)

    def _engine_unmount(self, id: str, target: str, chain: list[str] | None = None) -> None:
        """Unmount the union of ``id`` at ``target``; ``chain``: its ancestors, if the
        caller has just read them."""
        if chain is None:
            try:
                chain = self.store.chain(id)
            except FileNotFoundError:
                chain = []  # a half-removed layer: nothing above it is read any more
        self.engine.unmount(target, self.store.data_dir(id), [self.layout.diff(p) for p in chain])

    def status(self) -> Status:
        rows: Status = [
            ("Root Dir", self.root),
            ("Backing Filesystem", self.backing_fs),
            ("Dirs", str(len(self.ids()))),
            ("Dirperm1 Supported", "true" if self.engine.dirperm1 else "false"),
            ("Engine", self.engine.name),
            ("Whiteout Format", self.whiteouts.name),
        ]
        rows.extend(self.engine.describe())
        return rows

    def cleanup(self) -> None:
        """Unmount every union of this store and release the root's private mount."""
        from aufs._sys import mount as sysmount

        lay = self.layout
        with self._lock.hold():
            errors: list[str] = []
            for name in os.listdir(lay.refs_dir):
                if is_valid_id(name) and refs.mounting(lay.refs(name)):
                    self.engine.clear(lay.mnt(name))  # before its daemon can mount
            from aufs._sys import mountinfo

            for entry in reversed(list(mountinfo.mounts_under(lay.mnt_dir))):
                name = os.path.basename(entry.mountpoint)
                try:
                    if os.path.dirname(entry.mountpoint) == lay.mnt_dir and is_valid_id(name):
                        self._engine_unmount(name, entry.mountpoint)
                    else:
                        sysmount.unmount(entry.mountpoint)
                except OSError as exc:
                    errors.append(f"{entry.mountpoint}: {exc}")
            for name in os.listdir(lay.refs_dir):
                if is_valid_id(name):
                    refs.clear(lay.refs(name))
            if errors:
                raise DriverError("cleanup could not unmount: " + "; ".join(errors))
            _release_bind(lay.root)
            # A Docker store: as we found it (a later call makes .aufs/ again).
            self._private_removed = private.remove_if_transient(lay)

    def close(self) -> None:
        """Release the root's private mount if no union stands under it (CLI exit)."""
        if self._engine is None or self._private_removed:
            return  # opened for reading and never prepared, or cleaned up: nothing bound
        with self._lock.hold():
            _release_bind(self.layout.root)

    # -- diffs (aufs.archive) -----------------------------------------------------------
    def _direct_chain(self, id: str, parent: str) -> list[str] | None:
        """The layer's ancestors (nearest first) when ``parent`` is empty or its direct
        parent; None when ``parent`` is another layer (the seed's naive path)."""
        if parent:
            validate_id(parent)
        chain = self.parents(id)
        if not parent:
            return chain
        if not self.exists(parent):
            raise LayerNotFoundError(f"no such layer: {parent}")
        return chain if chain and chain[0] == parent else None

    @contextlib.contextmanager
    def _reading(self, *ids: str) -> Iterator[None]:
        """A layer that another thread or process removes while we read it is unknown
        (also when a new layer of the same id has been created meanwhile)."""
        before = {i: _inode(self.layout.diff(i)) for i in ids if i and is_valid_id(i)}
        try:
            yield
        except (FileNotFoundError, NotADirectoryError) as exc:
            gone = [i for i, ino in before.items()
                    if not self.exists(i) or _inode(self.layout.diff(i)) != ino]
            if not gone:
                # a layer's data missing or no directory: name it
                problem = chains.dir_problem(self.layout, self._chain_ids(*before))
                if problem is not None:
                    raise StoreCorruptError(problem) from exc
                raise
            raise LayerNotFoundError(f"no such layer: {gone[0]} (removed meanwhile)") from exc

    def _chain_ids(self, *ids: str) -> list[str]:
        out: list[str] = []
        for i in ids:
            with contextlib.suppress(DriverError, OSError):
                out += [i, *chains.read_chain(self.layout, i)]
        return out

    def diff(self, id: str, parent: str = "") -> IO[bytes]:
        from aufs.archive import export

        with self._reading(id, parent):
            if self._direct_chain(id, parent) is None:
                from aufs.graphdriver import naive  # the tar and apply code: only here

                return naive.naive_diff(self, id, parent)
            path = self.store.data_dir(id)

            def still_this_layer(root_fd: int) -> None:
                st = os.fstat(root_fd)
                if not self.exists(id) or _inode(path) != st.st_ino:
                    raise LayerNotFoundError(f"layer {id} was removed or replaced while its "
                                             "diff was read")

            return export.export_layer(path, at_end=still_this_layer)

    def changes(self, id: str, parent: str = "") -> list[Change]:
        from aufs.archive import changes

        with self._reading(id, parent):
            chain = self._direct_chain(id, parent)
            if chain is None:
                from aufs.graphdriver import naive

                return naive.naive_changes(self, id, parent)
            lowers = [self.store.data_dir(p) for p in chain]
            return changes.layer_changes(lowers, self.store.data_dir(id))

    def diff_size(self, id: str, parent: str = "") -> int:
        from aufs.archive import changes

        with self._reading(id, parent):
            if self._direct_chain(id, parent) is None:
                from aufs.graphdriver import naive

                return naive.naive_diff_size(self, id, parent)
            return changes.diff_size(self.store.data_dir(id))

    def apply_diff(self, id: str, parent: str, stream: IO[bytes]) -> int:
        self.parents(id)
        if parent:
            validate_id(parent)
        size = self._apply(id, stream)  # counted as it went, if it could
        if size is not None and self._direct_chain(id, parent) is not None:
            return size
        return self.diff_size(id, parent)

    def _apply(self, id: str, stream: IO[bytes]) -> int | None:
        """Extract into a staging clone of the layer, then swap it in: all or nothing.
        Returns the diff size if the extraction could count it (else None). An apply
        into an empty layer records the tar, so that an export gives the same bytes."""
        from aufs.archive import apply, tarsplit
        from aufs.store import images, staging

        self._refuse_mounted(id)
        if self.store.relocated(id):
            raise DriverError(f"layer {id} lives outside the store ({self.layout.diff(id)} is a "
                              "symlink, left by a migration): apply_diff cannot replace it "
                              "atomically")
        with staging.LayerSwap(self.layout, id) as swap:
            split = (tarsplit.Recorder(swap.companion("tar-split"))
                     if not swap.made and self.keep_tar_split else None)
            try:
                size = apply.extract(swap.fd, stream, self.whiteouts, made=swap.made,
                                     split=split)
                recorded = split.path if split is not None and split.finish(swap.path) else None
                with self._lock.hold():
                    self._refuse_mounted(id)  # its files would change under the union's users
                    swap.commit()
                    images.keep_tar_split(self.layout, id, recorded)
            finally:
                if split is not None:
                    split.discard()
        return size

    def _refuse_mounted(self, id: str) -> None:
        """A layer whose union is mounted, or that is a lower branch of another layer's
        mounted union, must not change under that union's users."""
        if self.mounted(id):
            raise LayerMountedError(f"layer {id} is mounted: apply_diff needs it unmounted")
        if self.refcount(id) > 0:  # a base layer's get hands out diff/<id> itself
            raise LayerMountedError(f"layer {id} is in use (get without put): apply_diff "
                                    "needs it released")
        from aufs._sys import mountinfo

        mnt_dir = self.layout.mnt_dir
        for entry in mountinfo.mounts_under(mnt_dir):
            head, _, other = entry.mountpoint.rpartition("/")
            if head != mnt_dir or other == id or not is_valid_id(other):
                continue
            try:
                chain = self.parents(other)
            except LayerNotFoundError:
                continue
            if id in chain:
                raise LayerMountedError(f"layer {id} is a lower branch of the mounted layer "
                                        f"{other}: apply_diff needs that one unmounted")

    def migrate(self, path: str | os.PathLike[str],
                setup_init: Callable[[str], object]) -> None:
        """Move a pre-0.7 Docker graph at ``path`` into this store (the seed's Migrate)."""
        from aufs import migrate

        migrate.migrate(self, os.fspath(path), setup_init)

    def move_in(self, id: str, path: str | os.PathLike[str]) -> None:
        """Make the directory ``path`` the files of the existing layer ``id``, whose own
        directory must be empty (just created) or a symlink an earlier call left.

        Whiteouts in ``path`` are first rewritten into the store's format (as ``aufs
        convert`` does). Then ``path`` is renamed into the store; where that fails
        (another filesystem, a union of the store mounted) ``diff/<id>`` becomes a
        symlink to it instead — only if ``path`` is where a pre-0.7 graph keeps a layer
        (``…/graph/<id>/layer`` or ``…/containers/<id>/rw``), the one symlink the store
        follows; otherwise DriverError. Calling it again after a kill, or after a
        symlink, finishes the move. What the seed's Migrate did for each layer."""
        validate_id(id)
        src = os.path.abspath(os.fspath(path))
        with self._root_unbound():
            self.store.check_move_in(id, src)
            from aufs.layer_format import normalize_layer

            normalize_layer(self.layout, id, os.path.realpath(src), self.whiteouts)
            self.store.move_in(id, src)

    @contextlib.contextmanager
    def _root_unbound(self) -> Iterator[None]:
        """Hold the lock with the root's private bind released, when nothing is mounted
        below it, so that renames from elsewhere on the filesystem into the store work
        (a bind mount is a different mount: rename(2) across it fails with EXDEV)."""
        from aufs._sys import mount as sysmount

        with self._lock.hold():
            _release_bind(self.layout.root)
            try:
                yield
            finally:
                if os.geteuid() == 0:
                    sysmount.bind_private(self.layout.root)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (for modules that change a layer in place)."""
        with self._lock.hold():
            yield


def _inode(path: str) -> int:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return 0
