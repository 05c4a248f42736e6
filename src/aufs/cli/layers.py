"""Commands on the store and its layers: status, ls, tree, create, mount, umount, rm,
changes, size, cleanup, migrate, convert."""

from __future__ import annotations

import errno
import os
import re
import sys
from dataclasses import dataclass

from aufs.cli.context import Context, human_size
from aufs.driver import Driver
from aufs.errors import LayerNotFoundError, StoreCorruptError
from aufs.image import names


def status(ctx: Context) -> None:
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
    damaged: str = ""  # why the layer cannot be used (aufs check tells more)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id, "parent": self.parent or None, "size": self.size,
            "mounted": self.mounted, "refs": self.refs, "names": self.names}
        if self.damaged:
            out["damaged"] = self.damaged
        return out


def _layers(d: Driver) -> list[_Layer]:
    named = names.by_layer(names.read(d.layout))
    out = []
    with d.store.snapshot():  # each layers/<id> read once, not once per lookup
        for layer_id in d.ids():
            try:
                chain = d.parents(layer_id)
                out.append(_Layer(layer_id, chain[0] if chain else "", d.diff_size(layer_id),
                                  d.mounted(layer_id), d.refcount(layer_id),
                                  named.get(layer_id, [])))
            except LayerNotFoundError:
                continue  # removed while we looked
            except StoreCorruptError as exc:  # listed, so that it can be seen and removed
                print(f"aufs: warning: {exc}", file=sys.stderr)
                out.append(_Layer(layer_id, "?", 0, False, 0, named.get(layer_id, []), str(exc)))
    return out


def ls(ctx: Context) -> None:
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


def tree(ctx: Context) -> None:
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


def create(ctx: Context) -> None:
    parent = ctx.layer(ctx.args.parent) if ctx.args.parent else ""
    ctx.driver.create(ctx.args.id, parent)


def mount(ctx: Context) -> None:
    print(ctx.driver.get(ctx.layer(ctx.args.id)))


def umount(ctx: Context) -> None:
    ctx.driver.put(ctx.layer(ctx.args.id))


def rm(ctx: Context) -> None:
    d = ctx.driver
    layer_id = ctx.layer(ctx.args.id)
    with d.locked():
        d.remove(layer_id)
        names.drop_layer(d.layout, layer_id)


def changes(ctx: Context) -> None:
    a = ctx.args
    parent = ctx.layer(a.parent) if a.parent else ""
    changes = ctx.driver.changes(ctx.layer(a.id), parent)
    if a.json:
        ctx.out([{"path": c.path, "kind": c.kind.name.lower()} for c in changes])
        return
    for c in changes:
        print(f"{c.kind.letter} {quote_path(c.path)}")


# Characters that would end or bend a line (C0/C1 controls, DEL, Unicode line and
# paragraph separators) and bytes that are not UTF-8 (surrogate-escaped in names).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}


def quote_path(path: str) -> str:
    """A change's path for one text line: as it is, unless it holds a character that
    could forge or bend a line; then C-quoted (``"/a\\nD /etc/passwd"``), which no plain
    path can look like (those start with ``/``): ``\\xHH`` is a byte of the name that is
    not UTF-8 (or an ASCII control), ``\\uHHHH`` a Unicode control or separator.
    ``--json`` prints paths exactly."""
    if not _UNSAFE.search(path):
        return path
    out = []
    for ch in path:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte of the name
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif _UNSAFE.match(ch):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def size(ctx: Context) -> None:
    a = ctx.args
    layer_id = ctx.layer(a.id)
    size = ctx.driver.diff_size(layer_id, ctx.layer(a.parent) if a.parent else "")
    if a.json:
        ctx.out({"id": layer_id, "size": size})
    else:
        print(size)


def cleanup(ctx: Context) -> None:
    ctx.driver.cleanup()


def migrate(ctx: Context) -> None:
    from aufs.migrate import setup_init_layer

    if not os.path.isdir(ctx.args.path):
        raise FileNotFoundError(errno.ENOENT, "No such directory", ctx.args.path)
    ctx.driver.migrate(ctx.args.path, setup_init=setup_init_layer)


def convert(ctx: Context) -> None:
    from aufs import convert

    print(convert.convert(ctx.root, ctx.args.to))
