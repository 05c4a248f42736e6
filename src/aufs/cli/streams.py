"""Commands that move tar streams: diff, apply, import, export (with a progress bar)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Protocol

from aufs import progress
from aufs.cli.context import Context, UsageError
from aufs.cli.output import check_outside, open_output, replaceable

_CHUNK = 1 << 20


def diff(ctx: Context) -> None:
    a = ctx.args
    d = ctx.driver
    layer_id = ctx.layer(a.id)
    parent = ctx.layer(a.parent) if a.parent else ""
    if a.output is None and sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal: use -o FILE or a redirection")
    with progress.bar("diff", sys.stderr) as bar, d.diff(layer_id, parent) as stream, \
            open_output(a.output, ctx.root) as out:
        fd = _fileno(out) if a.compress == "none" else None
        if fd is not None:
            # Straight into the fd: file data by sendfile, never through Python bytes.
            from aufs.archive.stream import write_stream

            out.flush()
            write_stream(stream, fd, bar.update)
            return
        sink = _compressor(out, a.compress)
        while chunk := stream.read(_CHUNK):
            sink.write(chunk)
            bar.update(len(chunk))
        sink.close()


def _fileno(out: IO[bytes]) -> int | None:
    try:
        return out.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: in memory
        return None


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def _compressor(out: IO[bytes], kind: str) -> _Sink:
    from aufs.archive import compressor

    return compressor.open_compressor(out, kind)


def apply(ctx: Context) -> None:
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


def import_(ctx: Context) -> None:
    from aufs.image import load, names

    d = ctx.driver
    if ctx.args.name:
        names.validate_name(ctx.args.name)
    with progress.bar("import", sys.stderr) as bar:
        top = load.import_image(d, ctx.args.archive, on_bytes=bar.update)
    if ctx.args.name:
        with d.locked():
            names.set_name(d.layout, ctx.args.name, top)
    print(top)


def export(ctx: Context) -> None:
    from aufs.image import names, save

    a = ctx.args
    d = ctx.driver
    layer_id = ctx.layer(a.id)
    tag = a.tag
    if tag is not None:
        names.validate_name(tag)
    else:
        own = names.by_layer(names.read(d.layout)).get(layer_id, [])
        tag = names.reference(own)
    output = a.output
    check_outside(output, ctx.root)
    with progress.bar("export", sys.stderr) as bar:
        if replaceable(output):  # written beside it, renamed over it when whole
            save.export_image(d, layer_id, output, format=a.format, tag=tag,
                              compress=a.compress, on_bytes=bar.update)
            return
        # A device, a FIFO, a symlink: built elsewhere, then written into it.
        with tempfile.TemporaryDirectory(prefix="aufs-export-") as scratch:
            image = os.path.join(scratch, "image.tar")
            save.export_image(d, layer_id, image, format=a.format, tag=tag,
                              compress=a.compress, on_bytes=bar.update)
            with open(image, "rb") as src, open_output(output, ctx.root) as out:
                shutil.copyfileobj(src, out, _CHUNK)
