"""Commands for Docker: ``docker-plugin`` (serve dockerd) and ``docker-adopt``."""

from __future__ import annotations

import logging
import sys

from aufs.cli.context import Context, Failed, UsageError


def plugin(ctx: Context) -> None:
    from aufs.docker import plugin as proto
    from aufs.docker import server

    name: str = ctx.args.name
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid plugin name {name!r}")
    if name == "aufs":
        raise UsageError("the plugin cannot be named 'aufs': dockerd uses its built-in aufs "
                         "driver for that name and never asks a plugin")
    logging.basicConfig(stream=sys.stderr, format=f"aufs {name}: %(message)s",
                        level=logging.DEBUG if ctx.args.verbose else logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    p = proto.GraphDriverPlugin(name, root=ctx.args.root, engine=ctx.args.engine)
    try:
        server.serve(p, server.socket_path(name))
    except proto.PluginError as exc:
        raise Failed(str(exc)) from exc


def adopt(ctx: Context) -> None:
    from aufs.docker import adopt as adoption

    try:
        report = adoption.run(ctx.args.data_root, ctx.args.name, undo=ctx.args.undo)
    except adoption.AdoptError as exc:
        raise Failed(str(exc)) from exc
    if ctx.args.json:
        ctx.out(report.as_json())
    else:
        for line in report.lines():
            print(line)
