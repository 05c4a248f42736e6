#!/usr/bin/env python3
"""Build the sample image: an OCI image layout tar of two layers, from files in this repo.

    python3 examples/build_sample.py OUT.tar

Layer 1 is ``examples/image/base``; layer 2 is ``examples/image/app`` plus a whiteout that
deletes ``etc/motd`` from the base. The output is deterministic (sorted entries, fixed
times and owners, gzip without name or time): the same files give the same digests.
No network, only the standard library.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 1_700_000_000
TAG = "sample"


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def layer_tar(src: str, deletions: tuple[str, ...] = ()) -> bytes:
    """An uncompressed layer tar of the tree at ``src``, plus whiteouts for ``deletions``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in [*dirnames, *filenames]:
                entries.append(os.path.join(dirpath, name))
        for path in sorted(entries):
            rel = os.path.relpath(path, src)
            if os.path.isdir(path):
                tar.addfile(_info(rel, tarfile.DIRTYPE, 0o755))
            else:
                with open(path, "rb") as f:
                    data = f.read()
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(_info(rel, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
        for gone in deletions:  # Docker / OCI whiteout: an empty file ".wh.<name>"
            head, tail = os.path.split(gone)
            tar.addfile(_info(os.path.join(head, ".wh." + tail), tarfile.REGTYPE, 0o644))
    return buf.getvalue()


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def oci_layout(layers: list[bytes], tag: str = TAG) -> dict[str, bytes]:
    """The files of an OCI image layout holding ``layers`` (uncompressed tars), gzipped."""
    files: dict[str, bytes] = {}
    descs, diff_ids = [], []
    for tar in layers:
        gz = gzip.compress(tar, mtime=0)
        digest, _ = _blob(gz)
        files["blobs/sha256/" + digest[7:]] = gz
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": digest, "size": len(gz)})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = _json({"architecture": arch, "os": "linux",
                    "config": {"Cmd": ["/app/hello.sh"]},
                    "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    cdigest, _ = _blob(config)
    files["blobs/sha256/" + cdigest[7:]] = config
    manifest = _json({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": cdigest, "size": len(config)},
                      "layers": descs})
    mdigest, _ = _blob(manifest)
    files["blobs/sha256/" + mdigest[7:]] = manifest
    files["index.json"] = _json({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": mdigest, "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]})
    files["oci-layout"] = _json({"imageLayoutVersion": "1.0.0"})
    return files


def write_tar(files: dict[str, bytes], out: str) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: build_sample.py OUT.tar", file=sys.stderr)
        return 2
    base = layer_tar(os.path.join(HERE, "image", "base"))
    app = layer_tar(os.path.join(HERE, "image", "app"), deletions=("etc/motd",))
    write_tar(oci_layout([base, app]), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
