"""The ``aufs`` command line: a layer store for people and scripts.

``aufs [--root DIR] [--engine E] [--json] [--debug] COMMAND ...``

Exit status: 0 done, 1 the operation failed, 2 the command line was wrong. Every error
is one line on stderr, made in one place (:func:`_failure`); ``--debug`` shows the
traceback instead. Each command opens the store, runs, and closes it (which releases the
store root's private bind mount when no union is under it) — never a ``cleanup``: a
``mount`` stays mounted after the process exits, and a later ``umount`` in another
process unmounts it (reference counts are on disk).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import gzip
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, NoReturn, Protocol

from aufs import __version__, progress
from aufs.archive import ArchiveError
from aufs.driver import Driver, init
from aufs.graphdriver import DriverError, InvalidLayerIDError, LayerNotFoundError
from aufs.image import ImageError, names
from aufs.options import ENGINES
from aufs.store.layout import Layout

DEFAULT_ROOT = "/var/lib/aufs"
_CHUNK = 1 << 20

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line asks for something that cannot be (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its complaint on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


# -- the store, opened once per command ------------------------------------------------

@dataclass
class _Context:
    args: argparse.Namespace
    _driver: Driver | None = field(default=None, init=False)

    @property
    def root(self) -> str:
        root: str = self.args.root or os.environ.get("AUFS_ROOT") or DEFAULT_ROOT
        return root

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            opts = [f"aufs.engine={self.args.engine}"] if self.args.engine else []
            _say_if_busy(self.root)
            self._driver = init(self.root, opts)
        return self._driver

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()

    def layer(self, ref: str) -> str:
        """A layer id, or a name given by ``import --name``."""
        d = self.driver
        if d.exists(ref):
            return ref
        return names.read(d.layout).get(ref, ref)

    def out(self, obj: object) -> None:
        json.dump(obj, sys.stdout, indent=2)
        sys.stdout.write("\n")


def _say_if_busy(root: str) -> None:
    """On a terminal, tell why we wait when another process holds the store lock."""
    if not sys.stderr.isatty():
        return
    try:
        fd = os.open(Layout.at(root).lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"aufs: waiting for another aufs process using {root} ...", file=sys.stderr)
    finally:
        os.close(fd)


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# -- commands --------------------------------------------------------------------------

def _status(ctx: _Context) -> None:
    rows = ctx.driver.status()
    if ctx.args.json:
        ctx.out(dict(rows))
        return
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")


@dataclass(frozen=True, slots=True)
class _Layer:
    id: str
    parent: str
    size: int
    mounted: bool
    refs: int
    names: list[str]

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "parent": self.parent or None, "size": self.size,
                "mounted": self.mounted, "refs": self.refs, "names": self.names}


def _layers(d: Driver) -> list[_Layer]:
    named = names.by_layer(names.read(d.layout))
    out = []
    for layer_id in d.ids():
        try:
            chain = d.parents(layer_id)
            out.append(_Layer(layer_id, chain[0] if chain else "", d.diff_size(layer_id),
                              d.mounted(layer_id), d.refcount(layer_id),
                              named.get(layer_id, [])))
        except LayerNotFoundError:
            continue  # removed while we looked
    return out


def _ls(ctx: _Context) -> None:
    layers = _layers(ctx.driver)
    if ctx.args.json:
        ctx.out([layer.as_json() for layer in layers])
        return
    rows = [[lay.id, lay.parent or "-", human_size(lay.size), "yes" if lay.mounted else "no",
             str(lay.refs), ",".join(lay.names) or "-"] for lay in layers]
    if sys.stdout.isatty():  # a script reads one layer a line, starting with its id
        rows.insert(0, ["ID", "PARENT", "SIZE", "MOUNTED", "REFS", "NAME"])
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _tree(ctx: _Context) -> None:
    layers = {lay.id: lay for lay in _layers(ctx.driver)}
    children: dict[str, list[str]] = {}
    for lay in layers.values():
        children.setdefault(lay.parent if lay.parent in layers else "", []).append(lay.id)

    def node(layer_id: str) -> dict[str, object]:
        return {**layers[layer_id].as_json(),
                "children": [node(c) for c in children.get(layer_id, [])]}

    if ctx.args.json:
        ctx.out([node(r) for r in children.get("", [])])
        return

    def label(lay: _Layer) -> str:
        text = f"{lay.id}  {human_size(lay.size)}"
        if lay.mounted:
            holders = "holder" if lay.refs == 1 else "holders"
            text += f"  mounted ({lay.refs} {holders})"
        elif lay.refs:
            text += f"  held ({lay.refs})"
        if lay.names:
            text += f"  [{', '.join(lay.names)}]"
        return text

    def draw(layer_id: str, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└── " if last else "├── ")
        print(prefix + branch + label(layers[layer_id]))
        kids = children.get(layer_id, [])
        inner = prefix if top else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            draw(kid, inner, i == len(kids) - 1, False)

    for r in children.get("", []):
        draw(r, "", True, True)


def _create(ctx: _Context) -> None:
    parent = ctx.layer(ctx.args.parent) if ctx.args.parent else ""
    ctx.driver.create(ctx.args.id, parent)


def _mount(ctx: _Context) -> None:
    print(ctx.driver.get(ctx.layer(ctx.args.id)))


def _umount(ctx: _Context) -> None:
    ctx.driver.put(ctx.layer(ctx.args.id))


def _rm(ctx: _Context) -> None:
    d = ctx.driver
    layer_id = ctx.layer(ctx.args.id)
    with d.locked():
        d.remove(layer_id)
        names.drop_layer(d.layout, layer_id)


def _diff(ctx: _Context) -> None:
    a = ctx.args
    d = ctx.driver
    layer_id = ctx.layer(a.id)
    parent = ctx.layer(a.parent) if a.parent else ""
    if a.output is None and sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal: use -o FILE or a redirection")
    with progress.bar("diff", sys.stderr) as bar, d.diff(layer_id, parent) as stream, \
            _output(a.output) as out:
        sink = _compressor(out, a.compress)
        while chunk := stream.read(_CHUNK):
            sink.write(chunk)
            bar.update(len(chunk))
        if sink is not out:
            sink.close()


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def _compressor(out: IO[bytes], kind: str) -> _Sink:
    if kind == "gzip":
        return gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0)
    if kind == "zstd":
        import zstandard

        writer: _Sink = zstandard.ZstdCompressor().stream_writer(out, closefd=False)
        return writer
    return out


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or ``path`` written whole or not at all (through a temporary name)."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    tmp = f"{path}.part-{os.getpid()}"
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _apply(ctx: _Context) -> None:
    a = ctx.args
    d = ctx.driver
    parent = ctx.layer(a.parent) if a.parent else ""
    if a.file == "-" and sys.stdin.isatty():
        raise UsageError("refusing to read a tar from a terminal: give FILE or a redirection")
    layer_id = ctx.layer(a.id)
    with _input(a.file) as raw:  # a missing FILE fails before any layer is made
        created = False
        if not d.exists(layer_id):
            d.create(layer_id, parent)  # a new layer on --parent, removed again on failure
            created = True
        try:
            total = os.fstat(raw.fileno()).st_size if a.file != "-" else None
            with progress.bar("apply", sys.stderr, total) as bar:
                size = d.apply_diff(layer_id, parent, bar.wrap(raw))
        except BaseException:
            if created:
                with contextlib.suppress(Exception):
                    d.remove(layer_id)
            raise
    print(size)


@contextlib.contextmanager
def _input(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as f:
        yield f


def _changes(ctx: _Context) -> None:
    a = ctx.args
    parent = ctx.layer(a.parent) if a.parent else ""
    changes = ctx.driver.changes(ctx.layer(a.id), parent)
    if a.json:
        ctx.out([{"path": c.path, "kind": c.kind.name.lower()} for c in changes])
        return
    for c in changes:
        print(c)


def _size(ctx: _Context) -> None:
    a = ctx.args
    layer_id = ctx.layer(a.id)
    size = ctx.driver.diff_size(layer_id, ctx.layer(a.parent) if a.parent else "")
    if a.json:
        ctx.out({"id": layer_id, "size": size})
    else:
        print(size)


def _cleanup(ctx: _Context) -> None:
    ctx.driver.cleanup()


def _migrate(ctx: _Context) -> None:
    from aufs.migrate import setup_init_layer

    if not os.path.isdir(ctx.args.path):
        raise FileNotFoundError(errno.ENOENT, "No such directory", ctx.args.path)
    ctx.driver.migrate(ctx.args.path, setup_init=setup_init_layer)


def _convert(ctx: _Context) -> None:
    try:
        from aufs import convert
    except ImportError as exc:
        raise DriverError(f"convert is not available in this build ({exc})") from exc
    print(convert.convert(ctx.root, ctx.args.to))


def _import(ctx: _Context) -> None:
    from aufs.image import load

    d = ctx.driver
    if ctx.args.name:
        names.validate_name(ctx.args.name)
    with progress.bar("import", sys.stderr) as bar:
        top = load.import_image(d, ctx.args.archive, on_bytes=bar.update)
    if ctx.args.name:
        with d.locked():
            names.set_name(d.layout, ctx.args.name, top)
    print(top)


def _export(ctx: _Context) -> None:
    from aufs.image import save

    d = ctx.driver
    layer_id = ctx.layer(ctx.args.id)
    tag = ctx.args.tag
    if tag is None:
        own = names.by_layer(names.read(d.layout)).get(layer_id, [])
        tag = own[0].rsplit(":", 1)[-1] if own and ":" in own[0] else "latest"
    with progress.bar("export", sys.stderr) as bar:
        save.export_image(d, layer_id, ctx.args.output, tag=tag, on_bytes=bar.update)


# -- the parser ------------------------------------------------------------------------

Command = Callable[[_Context], None]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aufs", description="Docker's AUFS layer store on today's kernels.")
    p.add_argument("--version", action="version", version=f"aufs {__version__}")
    p.add_argument("--root", metavar="DIR",
                   help=f"the store (default: $AUFS_ROOT or {DEFAULT_ROOT})")
    p.add_argument("--engine", choices=ENGINES, help="union engine (default: auto)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, func: Command, help: str, *, json_out: bool = False) -> _Parser:
        sp: _Parser = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if json_out:  # also accepted after the command
            sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="machine-readable output")
        return sp

    def layer(sp: _Parser, what: str = "layer id or name") -> None:
        sp.add_argument("id", metavar="ID", help=what)

    def against(sp: _Parser) -> None:
        sp.add_argument("--parent", metavar="P", help="compare against this ancestor")

    cmd("status", _status, "show the store and engine", json_out=True)
    cmd("ls", _ls, "list layers: id, parent, size, mounted, refs, name", json_out=True)
    cmd("tree", _tree, "draw the layers as a tree", json_out=True)
    sp = cmd("create", _create, "create an empty layer")
    layer(sp, "new layer id")
    sp.add_argument("--parent", metavar="P", help="parent layer")
    layer(cmd("mount", _mount, "mount a layer and print its path"))
    layer(cmd("umount", _umount, "drop one mount reference (the last one unmounts)"))
    layer(cmd("rm", _rm, "remove a layer"))
    sp = cmd("diff", _diff, "write the layer's changes as a tar")
    layer(sp)
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    sp.add_argument("--compress", choices=("none", "gzip", "zstd"), default="none")
    against(sp)
    sp = cmd("apply", _apply, "extract a layer tar into a layer (created if missing); "
             "prints the layer's size")
    layer(sp)
    sp.add_argument("file", metavar="FILE", nargs="?", default="-",
                    help="tar, optionally compressed (default: stdin)")
    sp.add_argument("--parent", metavar="P", help="parent of a new layer")
    sp = cmd("changes", _changes, "list the layer's changes (A/C/D path)", json_out=True)
    layer(sp)
    against(sp)
    sp = cmd("size", _size, "bytes in the layer's own files", json_out=True)
    layer(sp)
    against(sp)
    cmd("cleanup", _cleanup, "unmount every layer of the store")
    sp = cmd("migrate", _migrate, "move a pre-0.7 Docker graph into the store")
    sp.add_argument("path", metavar="PATH")
    sp = cmd("convert", _convert, "rewrite the store's whiteouts in another format")
    sp.add_argument("--to", choices=("overlay", "aufs"), required=True)
    sp = cmd("import", _import, "import a docker-save tarball or an OCI image layout; "
             "prints the top layer id")
    sp.add_argument("archive", metavar="ARCHIVE")
    sp.add_argument("--name", metavar="NAME", help="record a name for the top layer")
    sp = cmd("export", _export, "write the chain base..ID as an OCI image layout tar")
    layer(sp)
    sp.add_argument("-o", "--output", metavar="FILE", required=True)
    sp.add_argument("--tag", help="reference name in index.json (default: from the layer's "
                    "name, else latest)")
    return p


# -- errors: the one place an exception becomes a line ---------------------------------

def _failure(exc: BaseException) -> tuple[int, str]:
    """Exit status and the one line to print for ``exc``."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, InvalidLayerIDError | names.InvalidNameError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, DriverError | ArchiveError | ImageError | ValueError):
        return EXIT_FAILED, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.filename is not None:
            what = f"{exc.filename}: {what}"
        if isinstance(exc, PermissionError) and os.geteuid() != 0:
            what += " (mounting layers needs root)"
        return EXIT_FAILED, what
    return EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc} (run with --debug)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    ctx = _Context(args)
    try:
        try:
            args.func(ctx)
        finally:
            ctx.close()
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("aufs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`aufs ls | head`): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        code, line = _failure(exc)
        print(f"aufs: {line}", file=sys.stderr)
        return code
    return EXIT_OK


def entry() -> None:
    sys.exit(main())
