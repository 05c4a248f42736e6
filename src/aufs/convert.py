"""``aufs convert --to overlay|aufs``: rewrite a store's whiteouts in place.

A store keeps one whiteout format (``.aufs/store.json``): ``aufs`` (``.wh.`` files; what
Docker's aufs driver left behind, read by fuse-overlayfs) or ``overlay`` (0:0 character
devices and ``trusted.overlay.opaque``; what kernel overlayfs needs). Converting rewrites
every layer's markers with :meth:`WhiteoutFormat.normalize` — the migration Docker never
shipped, which made users re-pull every image when they left aufs.

What a layer looks like afterwards: each marker keeps the owner, mode and times of the
one it replaces, and every directory whose entries changed gets its times back, so
``changes`` and ``diff`` of every layer are the same before and after. AUFS housekeeping
(``.wh..wh.plnk`` pseudo-links, ``.wh..wh.aufs``, ``.wh..wh.orph``, anything under
``.wh..wh.``) would be ordinary visible files in an overlay union: converting to overlay
moves each such entry into ``.aufs/attic/<id>/<its path>``, and converting back to aufs
puts it back (unless the layer has since got something of that name, or lost the
directory: then the attic copy is dropped). Nothing of it is ever content. The other
engine's private attributes (``user.fuseoverlayfs.*``, ``trusted.overlay.*``) go too.

Crash safety — kill -9 at any point, run the same command again, and it finishes:

1. Under the store lock, with no layer mounted or held, ``.aufs/convert.json`` (the
   journal: target format, layers done) is written before any layer is touched.
2. Layer by layer (:mod:`aufs.layer_format`): the times of the directories about to
   change are saved in ``.aufs/convert/<id>.json`` first; then markers are rewritten
   (each new one is made before the old one is removed: :meth:`~WhiteoutFormat.normalize`
   is idempotent) and housekeeping moved (one rename each; across filesystems a copy
   published by rename, then the original removed); then the times are put back, the
   layer is added to the journal, and its time file goes.
3. When all layers are done ``store.json`` flips to the new format, and then the
   journal goes.

While a journal exists :func:`aufs.init` refuses the store (:class:`ConversionPendingError`,
telling to run ``aufs convert --to X``): its layers are in two formats and no engine
reads that correctly. Running ``convert`` again finishes the job; running it with the
other target converts every layer to that one instead (also a way to undo).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from aufs._sys import mountinfo
from aufs._sys.files import ensure_dir, rmtree
from aufs.errors import ConversionPendingError, DriverError, LayerInUseError
from aufs.layer_format import LayerRewrite, normalize_layer
from aufs.store import dirs, layers, meta, refs, staging
from aufs.store.layout import Layout, is_valid_id
from aufs.store.lock import StoreLock
from aufs.store.meta import check_not_pending, pending
from aufs.store.recover import pid_alive
from aufs.store.store import Store
from aufs.whiteout import AUFS, get_format

__all__ = ["ConversionPendingError", "ConvertReport", "check_not_pending", "convert",
           "pending"]

@dataclass(frozen=True, slots=True)
class ConvertReport:
    root: str
    source: str        # the store's whiteout format before
    target: str        # and after
    layers: int        # layers in the store
    converted: int     # layers rewritten by this run (a resumed run skips finished ones)
    resumed: bool      # an interrupted conversion was found and finished
    rewritten: int     # whiteouts and opaque markers rewritten
    set_aside: int     # housekeeping entries moved into the attic (to overlay)
    restored: int      # housekeeping entries moved back from the attic (to aufs)

    def __str__(self) -> str:
        how = "finished converting" if self.resumed else "converted"
        text = (f"{how} {self.root} from {self.source} to {self.target} whiteouts: "
                f"{self.converted} of {self.layers} layers, {self.rewritten} markers rewritten")
        if self.set_aside:
            text += f", {self.set_aside} AUFS housekeeping entries set aside"
        if self.restored:
            text += f", {self.restored} AUFS housekeeping entries restored"
        return text


# -- the whole store -------------------------------------------------------------------


def convert(root: str | os.PathLike[str], to: str) -> ConvertReport:
    """Rewrite the whiteouts of every layer of the store at ``root`` into format ``to``
    (``"overlay"`` or ``"aufs"``); finish an interrupted conversion. See the module doc.

    Raises ValueError for an unknown format, LayerInUseError while a layer is mounted or
    held, DriverError if ``root`` is no store.
    """
    fmt = get_format(to)
    layout = Layout.at(os.path.realpath(os.fspath(root)))
    if not os.path.isdir(layout.layers_dir):
        raise DriverError(f"{layout.root} is not a layer store (it has no layers/ directory)")
    ensure_dir(layout.private_dir)  # a Docker aufs store has none yet
    with StoreLock(layout.lock_file).hold():
        dirs.require_sound(layout)  # attic/, convert/: removed from, written into
        _check_idle(layout)
        stored = meta.read(layout.meta_file)
        source = stored.whiteouts if stored is not None else AUFS.name
        try:
            journal = meta.read_journal(layout.convert_journal)
        except DriverError:
            journal = None  # unreadable: start over (every step is idempotent)
        resumed = journal is not None and journal.target == fmt.name
        if journal is None or journal.target != fmt.name:
            journal = meta.Journal(target=fmt.name, source=source)
        ids = layers.list_ids(layout.layers_dir)
        done = set(journal.done)
        # Every layer's directory first: a damaged one (diff/<id> a symlink to elsewhere)
        # refuses the conversion here, before the journal makes init refuse the store.
        todo = {i: _layer_dir(layout, i) for i in ids if i not in done}
        # Written anew by every run, a resumed one too: from here on init refuses the store,
        # and the appends below go after whole lines of this version (a journal of version
        # 1, or one whose last append was torn, would otherwise glue the next id onto it).
        meta.write_journal(layout.convert_journal, journal)
        counts = LayerRewrite()
        converted = 0
        for layer_id, path in todo.items():
            if path is not None:
                counts.add(normalize_layer(layout, layer_id, path, fmt))
            meta.journal_done(layout.convert_journal, layer_id)
            converted += 1
        engine = stored.engine if stored is not None and stored.whiteouts == fmt.name else ""
        meta.write(layout.meta_file, meta.StoreMeta(whiteouts=fmt.name, engine=engine))
        _tidy(layout)
        os.unlink(layout.convert_journal)
    return ConvertReport(root=layout.root, source=journal.source, target=fmt.name,
                         layers=len(ids), converted=converted, resumed=resumed,
                         rewritten=counts.rewritten, set_aside=counts.set_aside,
                         restored=counts.restored)


def _check_idle(layout: Layout) -> None:
    """Refuse while anything uses a layer: a union mounted, a reference held (a layer
    without parents is used in place), an extraction under way."""
    below = (layout.mnt_dir + "/", layout.diff_dir + "/")
    mounted = [e.mountpoint for e in mountinfo.mounts_under(layout.root)
               if e.mountpoint.startswith(below)]
    if mounted:
        names = ", ".join(os.path.basename(m) for m in mounted[:5])
        raise LayerInUseError(f"cannot convert while layers are mounted ({names}); "
                              f"unmount them (aufs umount ID) or run aufs cleanup")
    held = sorted(i for i, n in refs.all_counts(layout.refs_dir).items() if n > 0)
    if held:
        raise LayerInUseError(f"cannot convert while layers are in use ({', '.join(held[:5])} "
                              f"hold references); put them (aufs umount ID) or run "
                              f"aufs cleanup")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(layout.staging_dir):
            pid = staging.owner(name)
            if pid is not None and pid != os.getpid() and pid_alive(pid):
                raise LayerInUseError(f"cannot convert while process {pid} is writing a "
                                      f"layer ({layout.staging(name)})")


def _layer_dir(layout: Layout, layer_id: str) -> str | None:
    """The layer's directory (a migrated layer's ``diff/<id>`` may be a symlink to it)."""
    path = Store(layout).data_dir(layer_id)
    return path if os.path.isdir(path) else None


def _tidy(layout: Layout) -> None:
    """Drop what killed runs and removed layers left: temporary journal and time files,
    attics of layers gone, empty dirs."""
    # write_atomic's temporary files; their writers held the lock we hold now.
    temps = tuple(os.path.basename(p) + "~" for p in (layout.convert_journal, layout.meta_file))
    for top, prefixes in ((layout.private_dir, temps), (layout.convert_dir, ("",))):
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(top):
                if name.startswith(prefixes) and "~" in name:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(top, name))
    # The attic and time file of a layer removed since its conversion are garbage.
    for top, suffix in ((layout.attic_dir, ""), (layout.convert_dir, ".json")):
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(top):
                layer_id = name.removesuffix(suffix)
                if not is_valid_id(layer_id):
                    continue  # names no layer: never joined into a path (aufs check)
                if not os.path.lexists(layout.layers(layer_id)):
                    rmtree(os.path.join(top, name))
    for empty in (layout.convert_dir, layout.attic_dir):
        with contextlib.suppress(OSError):
            os.rmdir(empty)
