"""Write the seed corpus of ``apply_fuzz.py``: real layers, breakouts, malformed input.

    python fuzz/make_corpus.py [OUTDIR]     (default: fuzz/corpus)

Real layers come two ways: hand-built tars in every compression (``hostile.seeds``)
and layers exported by the driver itself from a store (as root: a layer with files,
a hard link, a symlink, a fifo, an xattr, a deletion and an opaque directory made
through the mounted union, so that the export holds real whiteouts).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import aufs  # noqa: E402
from tests.reliability import hostile  # noqa: E402


def exported_layers() -> dict[str, bytes]:
    """Layers made through a real store and exported with ``Driver.diff``."""
    if os.geteuid() != 0:
        return {}
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="aufs-corpus-") as tmp:
        d = aufs.init(os.path.join(tmp, "store"), ["aufs.engine=overlay"])
        try:
            d.create("base")
            base = d.layout.diff("base")
            for sub in ("etc", "usr/lib", "var/cache/app", "opaque/inner"):
                os.makedirs(os.path.join(base, sub))
            for name in ("etc/os-release", "usr/lib/libx.so", "var/cache/app/a",
                         "opaque/inner/old", "gone"):
                Path(base, name).write_bytes(os.urandom(200))
            d.create("top", "base")
            mnt = d.get("top")
            try:
                Path(mnt, "etc/os-release").write_text("NAME=changed\n")
                Path(mnt, "new-file").write_bytes(os.urandom(1000))
                os.link(os.path.join(mnt, "new-file"), os.path.join(mnt, "new-link"))
                os.symlink("/etc/os-release", os.path.join(mnt, "abs-link"))
                os.mkfifo(os.path.join(mnt, "fifo"))
                with contextlib.suppress(OSError):
                    os.setxattr(os.path.join(mnt, "new-file"), "user.note", b"hello")
                os.unlink(os.path.join(mnt, "gone"))
                import shutil

                shutil.rmtree(os.path.join(mnt, "opaque"))
                os.makedirs(os.path.join(mnt, "opaque"))
                Path(mnt, "opaque", "fresh").write_text("fresh\n")
            finally:
                d.put("top")
            for layer in ("base", "top"):
                with d.diff(layer) as stream:
                    out[f"exported-{layer}"] = stream.read()
            out["exported-top-gzip"] = gzip.compress(out["exported-top"], mtime=0)
        finally:
            d.cleanup()
    return out


def write_corpus(outdir: Path) -> int:
    outdir.mkdir(parents=True, exist_ok=True)
    seeds = {**hostile.seeds(), **exported_layers()}
    for name, data in seeds.items():
        (outdir / name).write_bytes(data)
    return len(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", default=str(HERE / "corpus"))
    args = parser.parse_args()
    n = write_corpus(Path(args.outdir))
    print(f"wrote {n} seeds to {args.outdir}")


if __name__ == "__main__":
    main()
