"""One scenario run the same way on any dockerd: the plugin's and overlay2's results must
be equal. Times (mtimes, image ids, dates) differ between two daemons and are left out;
everything else about the files is compared: names, types, modes, owners, link counts,
link targets and contents."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

from tests.daemons import Dockerd

# The 3-step Dockerfile: add, delete, replace a directory (opaque), hard link, symlink,
# setuid/setgid, a deleted directory of the base image, a changed file of the base image.
DOCKERFILE = """\
FROM base:1
RUN mkdir -p /data/dir/sub /data/old && echo a > /data/dir/sub/f && echo keep > /data/keep \
 && echo gone > /data/gone && echo o > /data/old/o
RUN rm /data/gone && rm -rf /data/dir && mkdir -p /data/dir && echo new > /data/dir/g \
 && ln /data/keep /data/hard && ln -s /data/keep /data/sym && ln -s ../keep /data/dir/rel
RUN cp /bin/busybox /data/suid && chmod 4755 /data/suid && chmod 2755 /data/old \
 && rm -rf /usr/share/doc/base && echo changed >> /etc/motd
"""

# What the container c1 changes on top of the built image.
CHANGE = ("echo more >> /data/keep; rm /data/sym; rm -rf /data/dir; mkdir -p /new/deep; "
          "echo x > /new/deep/f; rm /etc/motd; ln /data/suid /data/suid2; "
          "dd if=/dev/zero of=/new/zeros bs=1k count=64 2>/dev/null; chmod 600 /data/old/o")

# A listing of the container's root: path, mode, owner, type, links; md5 of every file.
# (A directory's link count is the filesystem's business: fuse-overlayfs counts
# subdirectories, kernel overlayfs says 1.)
FINGERPRINT = (
    "cd / && P='( -path ./proc -o -path ./sys -o -path ./dev -o -path ./etc/hostname "
    "-o -path ./etc/hosts -o -path ./etc/resolv.conf )'; "
    "find . -xdev $P -prune -o -print | sort | while read f; do "
    "if [ -d \"$f\" ]; then stat -c '%n|%a|%u|%g|%F' \"$f\"; "
    "else stat -c '%n|%a|%u|%g|%F|%h' \"$f\"; fi; [ -L \"$f\" ] && readlink \"$f\"; done; "
    "find . -xdev $P -prune -o -type f -print | sort | xargs md5sum")


def tar_content(data: bytes) -> list[tuple[object, ...]]:
    """The entries of a tar, sorted, without times: what 'identical in content' means
    (names, types, permissions, owners, sizes, link targets, data, xattr names)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            digest = ""
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()[:16]
            # Go's archive/tar also puts the type bits (S_IFDIR ...) in the mode field,
            # which no reader uses (the type flag says it): compared without them.
            # And Docker's overlay2 tars leave a stale link name on the whiteouts it turns
            # from shared (hard-linked) 0/0 devices into files: only links have one.
            link = m.linkname if m.issym() or m.islnk() else ""
            out.append((m.name.rstrip("/"), m.type, oct(m.mode & 0o7777), m.uid, m.gid, m.size,
                        link, digest, tuple(sorted(k for k in m.pax_headers
                                                         if k.startswith("SCHILY.xattr")))))
    return sorted(out, key=lambda e: str(e[0]))


def save_content(data: bytes) -> list[list[tuple[object, ...]]]:
    """``docker save`` output: each layer's content, in order."""
    return [tar_content(layer) for layer in save_layers(data)]


def save_layers(data: bytes) -> list[bytes]:
    """``docker save`` output: each layer's tar, in order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None
            return f.read()
        manifest = json.loads(read("manifest.json"))
        return [read(layer) for layer in manifest[0]["Layers"]]


@dataclass
class Results:
    built: str              # fingerprint of the built image
    diff: list[str]         # `docker diff c1`, sorted
    committed: str          # fingerprint of the committed image
    export: list[tuple[object, ...]]
    save: list[list[tuple[object, ...]]]
    save_raw: bytes


def run_scenario(d: Dockerd, rootfs: bytes) -> Results:
    net = ("--network", "none")
    d.out("import", "-", "base:1", input=rootfs)
    build(d, "built:1")
    built = d.out("run", "--rm", *net, "built:1", "sh", "-c", FINGERPRINT)
    d.out("run", "--name", "c1", *net, "built:1", "sh", "-c", CHANGE)
    diff = sorted(d.out("diff", "c1").splitlines())
    d.out("commit", "c1", "committed:1")
    committed = d.out("run", "--rm", *net, "committed:1", "sh", "-c", FINGERPRINT)
    export = tar_content(d.run("export", "c1").stdout)
    save_raw = d.run("save", "committed:1").stdout
    return Results(built, diff, committed, export, save_content(save_raw), save_raw)


def build(d: Dockerd, tag: str) -> None:
    """The classic builder (DOCKER_BUILDKIT=0), no network, the Dockerfile on stdin."""
    env = d.env
    d.env = {**env, "DOCKER_BUILDKIT": "0"}
    try:
        d.run("build", "--network", "none", "-q", "-t", tag, "-", input=DOCKERFILE.encode())
    finally:
        d.env = env
