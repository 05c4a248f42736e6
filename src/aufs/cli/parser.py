"""The argument parser: every command, its arguments and its help."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from aufs import __version__
from aufs.cli.context import DEFAULT_ROOT, EXIT_USAGE, Context
from aufs.options import ENGINES


class _Parser(argparse.ArgumentParser):
    """argparse, with its complaint on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class _CommandParser(_Parser):
    """A command's parser: options may come before, between or after its positional
    arguments (``aufs apply ID --parent P FILE``), as argparse's intermixed parsing
    reads them (the top-level parser cannot use it: it has the subcommands)."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the intermixed parse's own two passes
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


class _Skipped(_Parser):
    """Stands for a command not being built: arguments added to it are dropped."""

    def __init__(self) -> None:  # no argparse state: nothing is ever parsed with it
        pass

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return _NO_ACTION


_NO_ACTION = argparse.Action([], "")
_SKIPPED = _Skipped()


def _path(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("an empty path (give a directory)")
    return value


Command = Callable[[Context], None]
# A command is a function, or "module.function" in aufs.cli, imported when it runs:
# building the parser imports no command module (`aufs --version` stays instant).
CommandRef = Command | str


def resolve(func: CommandRef) -> Command:
    """The function a parsed command names."""
    if callable(func):
        return func
    module, name = func.rsplit(".", 1)
    found: Command = getattr(importlib.import_module(f"aufs.cli.{module}"), name)
    return found


def _translate_once() -> None:
    """argparse passes every string it makes through ``gettext``, and gettext searches for
    the catalogue again on each call (it keeps only catalogues it found): 90 searches,
    4.5 ms of every command's start. Look it up once, as gettext would (the same domain
    and directory), and give argparse that catalogue's functions."""
    import gettext

    domain = gettext.textdomain()
    if os.path.isdir(gettext.bindtextdomain(domain)):
        catalogue = gettext.translation(domain, gettext.bindtextdomain(domain), fallback=True)
        argparse._ = catalogue.gettext  # type: ignore[attr-defined]
        argparse.ngettext = catalogue.ngettext  # type: ignore[attr-defined]
    else:  # no directory, no catalogue: every string stays as it is
        argparse._ = str  # type: ignore[attr-defined]
        argparse.ngettext = _untranslated  # type: ignore[attr-defined]


def _untranslated(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural


def command_named(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` when it is plain to see: the first word after the
    global options spelled out whole (``--root DIR``, ``--root=DIR``, ``--engine E``,
    ``--json``, ``--debug``). Any other option before it (``--help``, an abbreviation
    argparse would expand) and it is None."""
    words = iter(argv)
    for word in words:
        if word in ("--json", "--debug"):
            continue
        if word in ("--root", "--engine"):
            next(words, None)
            continue
        if word.startswith(("--root=", "--engine=")):
            continue
        return None if word.startswith("-") else word
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for ``argv`` (the words after the program's name): where it names a command,
    only that command's parser is built (the others would cost a start-up a twentieth
    of a second's worth of argparse objects: 1.5 ms); otherwise, as for ``--help`` or a
    mistyped command, all of them."""
    only = command_named(argv)
    if only is not None:
        parser = _build(only)
        if parser is not None:
            return parser
    built = _build(None)
    assert built is not None
    return built


def _build(only: str | None) -> argparse.ArgumentParser | None:
    """Every command's parser, or only the command ``only`` (None if there is none)."""
    _translate_once()
    p = _Parser(prog="aufs", description="Docker's AUFS layer store on today's kernels.")
    p.add_argument("--version", action="version", version=f"aufs {__version__}")
    p.add_argument("--root", metavar="DIR", type=_path,
                   help=f"the store (default: $AUFS_ROOT or {DEFAULT_ROOT})")
    p.add_argument("--engine", choices=ENGINES, help="union engine (default: auto)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           parser_class=_CommandParser)

    def cmd(name: str, func: CommandRef, help: str, *, json_out: bool = False,
            reads: bool = False) -> _Parser:
        """``reads``: the command only reads the store, which it opens without preparing
        it (no engine probe, bind mount or recovery: :func:`aufs.driver.open_for_reading`)."""
        if only is not None and name != only:
            return _SKIPPED  # what is added to it goes nowhere
        sp: _Parser = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func, reads=reads)
        if json_out:  # also accepted after the command
            sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="machine-readable output")
        return sp

    def layer(sp: _Parser, what: str = "layer id or name") -> None:
        sp.add_argument("id", metavar="ID", help=what)

    def against(sp: _Parser) -> None:
        sp.add_argument("--parent", metavar="P", help="compare against this ancestor")

    cmd("status", "layers.status", "show the store and engine", json_out=True)
    cmd("ls", "layers.ls", "list layers: id, parent, size, mounted, refs, name", json_out=True,
        reads=True)
    cmd("tree", "layers.tree", "draw the layers as a tree", json_out=True,
        reads=True)
    sp = cmd("create", "layers.create", "create an empty layer")
    layer(sp, "new layer id")
    sp.add_argument("--parent", metavar="P", help="parent layer")
    layer(cmd("mount", "layers.mount", "mount a layer and print its path"))
    layer(cmd("umount", "layers.umount", "drop one mount reference (the last one unmounts)"))
    layer(cmd("rm", "layers.rm", "remove a layer"))
    sp = cmd("diff", "streams.diff", "write the layer's changes as a tar", reads=True)
    layer(sp)
    sp.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    sp.add_argument("--compress", choices=("none", "gzip", "zstd"), default="none")
    against(sp)
    sp = cmd("apply", "streams.apply", "extract a layer tar into a layer (created if missing); "
             "prints the layer's size")
    layer(sp)
    sp.add_argument("file", metavar="FILE", nargs="?", default="-",
                    help="tar, optionally compressed (default: stdin)")
    sp.add_argument("--parent", metavar="P", help="parent of a new layer")
    sp = cmd("changes", "layers.changes", "list the layer's changes (A/C/D path)",
             json_out=True, reads=True)
    layer(sp)
    against(sp)
    sp = cmd("size", "layers.size", "bytes in the layer's own files", json_out=True, reads=True)
    layer(sp)
    against(sp)
    cmd("cleanup", "layers.cleanup", "unmount every layer of the store")
    sp = cmd("check", "storecheck.check", "look for damaged or leftover files in the store "
             "(exit 1 if any)", json_out=True)
    sp.add_argument("--repair", action="store_true",
                    help="fix what can be fixed without losing layer data")
    sp = cmd("migrate", "layers.migrate", "move a pre-0.7 Docker graph into the store")
    sp.add_argument("path", metavar="PATH")
    sp = cmd("convert", "layers.convert", "rewrite the store's whiteouts in another format")
    sp.add_argument("--to", choices=("overlay", "aufs"), required=True)
    sp = cmd("import", "streams.import_", "import a docker-save tarball or an OCI image layout; "
             "prints the top layer id")
    sp.add_argument("archive", metavar="ARCHIVE")
    sp.add_argument("--name", metavar="NAME", help="record a name for the top layer")
    sp = cmd("export", "streams.export", "write the chain base..ID as an image tar (OCI "
             "layout or docker-archive) with the config it came with", reads=True)
    layer(sp)
    sp.add_argument("-o", "--output", metavar="FILE", required=True)
    sp.add_argument("--format", choices=("oci", "docker-archive"), default="oci",
                    help="oci (default) or docker-archive (for docker load before Docker 25)")
    sp.add_argument("--tag", metavar="REF", help="the image's reference, repo:tag (default: "
                    "the layer's name, else latest for oci, none for docker-archive)")
    sp.add_argument("--compress", choices=("gzip", "zstd", "none"),
                    help="layer compression (default: gzip for oci, none for docker-archive)")
    sp = cmd("pull", "registry.pull", "pull an image from a registry; prints the top layer id",
             json_out=True)
    sp.add_argument("ref", metavar="REF", help="[host[:port]/]repo[:tag][@digest]")
    sp.add_argument("--platform", metavar="P", help="os/arch[/variant] (default: this host's)")
    sp.add_argument("--insecure", action="store_true",
                    help="allow plain HTTP and unverified TLS for this registry")
    sp = cmd("push", "registry.push", "push the chain base..ID to a registry; prints the "
             "manifest digest", json_out=True)
    layer(sp)
    sp.add_argument("ref", metavar="REF", help="[host[:port]/]repo[:tag]")
    sp.add_argument("--insecure", action="store_true",
                    help="allow plain HTTP and unverified TLS for this registry")
    sp = cmd("docker-plugin", "docker.plugin", "serve Docker's graph-driver plugin protocol on "
             "/run/docker/plugins/NAME.sock until SIGTERM (dockerd --experimental -s NAME)")
    sp.add_argument("--name", default="aufs-plugin",
                    help="plugin and storage-driver name (default: aufs-plugin; not 'aufs')")
    sp.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                    help="the store (default: the Home dockerd sends, DATA-ROOT/NAME)")
    sp.add_argument("--engine", choices=ENGINES, default=argparse.SUPPRESS,
                    help="union engine (default: auto)")
    sp.add_argument("-v", "--verbose", action="store_true", help="log every call")
    sp = cmd("docker-adopt", "docker.adopt", "make a data root of Docker's aufs driver open "
             "under the plugin NAME (dockerd stopped); --undo restores it", json_out=True)
    sp.add_argument("--data-root", metavar="DIR", required=True,
                    help="dockerd's data root (/var/lib/docker)")
    sp.add_argument("--name", required=True, help="the plugin's name (storage-driver)")
    sp.add_argument("--undo", action="store_true", help="give the data root back to aufs")
    return p if only is None or only in sub.choices else None
