"""``aufs pull`` and ``aufs push``: images from and to a registry."""

from __future__ import annotations

import sys

from aufs.cli.context import Context
from aufs.image import names


def pull(ctx: Context) -> None:
    from aufs.registry import manifest, reference
    from aufs.registry.events import Events
    from aufs.registry.pull import pull as do_pull

    ref = reference.parse(ctx.args.ref)
    platform = manifest.parse_platform(ctx.args.platform) if ctx.args.platform else None
    d = ctx.driver
    events = Events(json_out=sys.stdout if ctx.args.json else None, bars=sys.stderr)
    pulled = do_pull(d, ref, platform=platform, insecure=ctx.args.insecure, events=events)
    with d.locked():
        names.set_name(d.layout, ref.familiar(), pulled.top)
    if not ctx.args.json:
        print(pulled.top)


def push(ctx: Context) -> None:
    from aufs.registry import reference
    from aufs.registry.events import Events
    from aufs.registry.push import push as do_push

    ref = reference.parse(ctx.args.ref)
    d = ctx.driver
    layer_id = ctx.layer(ctx.args.id)
    events = Events(json_out=sys.stdout if ctx.args.json else None, bars=sys.stderr)
    pushed = do_push(d, layer_id, ref, insecure=ctx.args.insecure, events=events)
    if not ctx.args.json:
        print(pushed.digest)
