"""Random store contents: a tampered or damaged store cannot be turned against its host.

:class:`StoreHarness` builds a small store (``a`` <- ``b`` <- ``c``, and ``d``), lets the
input bytes damage it (layer files with hostile lines, symlinks, directories and FIFOs
where files belong, ``-removing`` markers and leftovers with invalid ids, refs, staging,
``mnt/<id>`` pointing out), then runs every command on every layer, ``aufs check`` and
``--repair``. What must hold:

- only ``DriverError`` (``StoreCorruptError`` and the rest of the tree) escapes — no
  raw exception, no ``OSError``;
- the victim directory beside the store is exactly as before, and no union stacks a
  directory from outside the store (every branch of every mount under ``mnt/`` is
  inside the root);
- nothing stays mounted after ``cleanup()``.

Used by the bounded CI test (``test_store_fuzz.py``) and by ``fuzz/store_fuzz.py``.
Layer directories migrated by symlink (``diff/<id>`` a symlink, which ``migrate``
makes) are trusted by design, so the input never makes one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import aufs
from aufs._sys import mount as sysmount
from aufs._sys import mountinfo
from aufs._sys.files import rmtree
from aufs.graphdriver import DriverError
from aufs.store import check as checker
from aufs.store.layout import Layout
from tests.reliability import invariants
from tests.reliability.hostile import _Reader

LAYERS = {"a": "", "b": "a", "c": "b", "d": ""}
IDS = ("a", "b", "c", "d", "e", "nosuch")
LINES: tuple[bytes, ...] = (
    b"a", b"b", b"c", b"d", b"nosuch", b"..", b".", b"", b" a ", b"../../victim",
    b"../../../victim", b"/", b"/etc", b"a-removing", b"a/b", b"\xff\xfe", b"a\x00b",
    b"x" * 200, b"\xc3\xbc", b"c\r", b"../diff/a",
)
NAMES = (
    "..-removing", ".-removing", "-removing", "a-removing", "z-removing", "b-removing",
    "a~1", "x y", "\u00fc", "...", "orphan", "a", "b", "e", "a-removing-removing",
    "staging-1", "s-4194305",
)
TOPS = ("layers", "diff", "mnt", ".aufs/refs", ".aufs/staging", ".aufs/work")
Op = Callable[[aufs.Driver, str], object]


class Finding(AssertionError):
    """A broken promise: the input is a crash."""


class StoreHarness:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "store"
        self.victim = workdir / "victim"
        self.victim.mkdir(exist_ok=True)
        (self.victim / "hostfile").write_text("host\n")
        (self.victim / "dir").mkdir(exist_ok=True)
        (self.victim / "dir" / "inner").write_text("host\n")
        (self.victim / "chain").write_text("a\n")
        self.before = invariants.snapshot(str(self.victim))

    # -- one input --------------------------------------------------------------------
    def run(self, data: bytes) -> None:
        self._fresh()
        r = _Reader(data)
        for _ in range(1 + r.below(8)):
            with contextlib.suppress(OSError):  # a mutation that cannot apply: skip it
                self._mutate(r)
        try:
            self._exercise()
        finally:
            after = invariants.snapshot(str(self.victim))
            if after != self.before:
                raise Finding("the victim changed: "
                              + invariants.snapshot_diff(self.before, after))
            leaked = [m for m in mountinfo.read()
                      if m.mountpoint.startswith(str(self.workdir) + "/")]
            if leaked:
                for m in reversed(leaked):
                    with contextlib.suppress(OSError):
                        sysmount.detach(m.mountpoint)
                raise Finding(f"mounts left: {[m.mountpoint for m in leaked]}")

    def _fresh(self) -> None:
        if self.root.exists():
            rmtree(str(self.root))
        d = aufs.init(self.root, ["aufs.engine=overlay"])
        try:
            for layer, parent in LAYERS.items():
                d.create(layer, parent)
                (Path(d.layout.diff(layer)) / f"file-{layer}").write_text(layer)
        finally:
            d.cleanup()

    def _mutate(self, r: _Reader) -> None:
        root = self.root
        what = r.below(7)
        layer = r.text(IDS)
        if what == 0:  # a layer file with chosen lines
            lines = [r.pick(LINES) for _ in range(r.below(5))]
            path = root / "layers" / layer
            _write(path, b"\n".join(x for x in lines if isinstance(x, bytes)) + b"\n")
        elif what == 1:  # something else where layers/<id> should be a file
            path = root / "layers" / layer
            with contextlib.suppress(FileNotFoundError):
                rmtree(str(path))
            shape = r.below(5)
            if shape == 0:
                path.symlink_to(self.victim / "chain")
            elif shape == 1:
                path.symlink_to(root / "layers" / r.text(IDS))
            elif shape == 2:
                path.mkdir()
                (path / "x").write_text("a\n")
            elif shape == 3:
                os.mkfifo(path)
            else:
                path.symlink_to(self.victim / "dir")
        elif what == 2:  # a leftover with a chosen name
            top = root / r.text(TOPS)
            path = top / r.text(NAMES)
            kind = r.below(4)
            if path.exists() or path.is_symlink():
                return
            if kind == 0:
                path.write_text("3\n")
            elif kind == 1:
                path.mkdir()
                (path / "data").write_text("x")
            elif kind == 2:
                path.symlink_to(self.victim)
            else:
                path.symlink_to(self.victim / "hostfile")
        elif what == 3:  # mnt/<id> pointing out
            path = root / "mnt" / layer
            with contextlib.suppress(FileNotFoundError):
                rmtree(str(path))
            if r.below(2):
                path.symlink_to(self.victim / "dir")
            else:
                path.write_text("x")
        elif what == 4:  # a layer's data missing, or a file
            path = root / "diff" / layer
            with contextlib.suppress(FileNotFoundError):
                rmtree(str(path))
            if r.below(2):
                path.write_text("x")
        elif what == 5:  # a reference count
            _write(root / ".aufs" / "refs" / layer, bytes(r.byte() for _ in range(r.below(6))))
        else:  # a chain of layers made whole again the other way round
            _write(root / "layers" / layer, b"\n".join(
                x for x in (r.pick(LINES), r.pick(LINES)) if isinstance(x, bytes)))

    # -- every command ----------------------------------------------------------------
    def _exercise(self) -> None:
        try:
            d = aufs.init(self.root, ["aufs.engine=overlay"])
        except DriverError:
            return
        except BaseException as exc:
            raise Finding(f"init: raw {type(exc).__name__}: {exc}") from exc
        try:
            ops: list[tuple[str, Op]] = [
                ("exists", lambda d, i: d.exists(i)),
                ("parents", lambda d, i: d.parents(i)),
                ("get", self._get_put),
                ("changes", lambda d, i: d.changes(i)),
                ("diff_size", lambda d, i: d.diff_size(i)),
                ("diff", _read_diff),
                ("changes-naive", lambda d, i: d.changes(i, "a")),
                ("create", lambda d, i: d.create(i + "-child", i)),
                ("remove", lambda d, i: d.remove(i)),
            ]
            for name, op in ops:
                self._try(name, d, "", lambda d, _: d.ids())
                for layer in IDS:
                    self._try(name, d, layer, op)
            layout = Layout.at(self.root)
            self._try("check", d, "", lambda d, _: checker.repair(layout,
                                                                  checker.check(layout)))
            self._try("status", d, "", lambda d, _: d.status())
        finally:
            try:
                d.cleanup()
            except DriverError:
                pass
            except BaseException as exc:
                raise Finding(f"cleanup: raw {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _try(name: str, d: aufs.Driver, layer: str, op: Op) -> None:
        try:
            op(d, layer)
        except DriverError:
            pass
        except BaseException as exc:
            raise Finding(f"{name}({layer!r}): raw {type(exc).__name__}: {exc}") from exc

    def _get_put(self, d: aufs.Driver, layer: str) -> None:
        path = d.get(layer)
        try:
            self._branches_inside(d, layer, path)
        finally:
            d.put(layer)

    def _branches_inside(self, d: aufs.Driver, layer: str, path: str) -> None:
        root = os.path.realpath(d.root)
        if not os.path.realpath(path).startswith(root + "/"):
            raise Finding(f"get({layer!r}) gave {path}, outside the store")
        for m in mountinfo.read():
            if m.mountpoint != path:
                continue
            for opt in m.super_options.split(","):
                key, _, value = opt.partition("=")
                if key not in ("lowerdir", "upperdir", "workdir"):
                    continue
                for branch in value.split(":"):
                    real = os.path.realpath(branch)
                    if not (real == root or real.startswith(root + "/")):
                        raise Finding(f"get({layer!r}) stacked {branch} ({real}), "
                                      f"outside the store, into its union")


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` (never written through: it may be a symlink to the victim)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    if not path.is_dir():
        path.write_bytes(data)


def _read_diff(d: aufs.Driver, layer: str) -> None:
    with d.diff(layer) as stream:
        while stream.read(1 << 16):
            pass
