"""``aufs pull`` / ``aufs push`` against ``docker pull`` / ``docker push``; peak memory.

Issue 16's goals, as ratios measured in one run on a loop-mounted ext4 that holds
everything: the registry's storage, dockerd's data root (overlay2) and the aufs store.

==========================  =====================================================  ======
job                         reference                                              goal
==========================  =====================================================  ======
pull (3 layers, ~200 MiB)   ``docker pull`` of the same image (dockerd, overlay2)  <= 1.0x
push (fresh registry)       ``docker push`` of the same image (its pulled copy)    <= 1.0x
peak RSS                    ``aufs pull`` and ``aufs push`` of it (child's VmHWM)  < 64 MiB
==========================  =====================================================  ======

The image: the corpus' bookworm minbase root fs, the upper layer derived from it, and a
small third layer, gzip (level 6, as Go's default), pushed by skopeo into a
docker-registry on 127.0.0.1. Both sides run as CLI processes against warm caches (the
registry's blobs are in the page cache after the first round): a pull starts from an
empty store / after ``docker rmi``; a push goes to a registry started afresh for that
run (a new port, so neither side knows of a blob to mount or skip).

Run as root: ``python3 -m bench.registry [--reps N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

from bench import corpus
from bench.child import run_child
from bench.common import (
    BenchError,
    Job,
    Report,
    compare,
    loop_ext4,
    main_guard,
    require_root,
    require_tools,
)
from tests import daemons

GOALS = {"pull": 1.0, "push": 1.0}
RSS_GOAL_MIB = 64.0
LOOP_BYTES = 8 << 30
REF_PATH = "bench/image:1"

_RSS_CHILD = ("import sys\n"
              "from aufs.cli import main\n"
              "rc = main(sys.argv[1:])\n"
              "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
              "print('VmHWM', hwm[0], flush=True)\n"
              "sys.exit(rc)\n")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _small_layer(path: str) -> None:
    """A few files of an application: ~4 MiB."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("opt", "opt/app"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, corpus.UPPER_MTIME
            tar.addfile(info)
        for i in range(16):
            data = hashlib.sha256(b"%d" % i).digest() * (8192 * (i + 1) // 32)
            info = tarfile.TarInfo(f"opt/app/part-{i:02d}.bin")
            info.size, info.mode, info.mtime = len(data), 0o644, corpus.UPPER_MTIME
            tar.addfile(info, io.BytesIO(data))


class _Tee(io.RawIOBase):
    """Writes to a file and hashes what it writes."""

    def __init__(self, f: io.BufferedWriter, h: hashlib._Hash) -> None:
        self._f, self._h = f, h

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        data = bytes(b)  # type: ignore[call-overload]
        self._h.update(data)
        return self._f.write(data)


def build_layout(out: str, tars: list[str]) -> tuple[int, int]:
    """An OCI layout of ``tars`` (gzip level 6) at ``out``; (uncompressed, compressed) bytes."""
    blobs = Path(out, "blobs", "sha256")
    blobs.mkdir(parents=True)
    descs, diff_ids = [], []
    raw_total = gz_total = 0
    for tar in tars:
        diff = hashlib.sha256()
        comp = hashlib.sha256()
        tmp = blobs / "tmp"
        with open(tar, "rb") as src, open(tmp, "wb") as f:
            sink = _Tee(f, comp)
            with gzip.GzipFile(filename="", fileobj=sink, mode="wb",
                               mtime=0, compresslevel=6) as gz:
                while chunk := src.read(1 << 20):
                    diff.update(chunk)
                    gz.write(chunk)
                    raw_total += len(chunk)
        size = tmp.stat().st_size
        gz_total += size
        digest = "sha256:" + comp.hexdigest()
        tmp.rename(blobs / digest[7:])
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": digest, "size": size})
        diff_ids.append("sha256:" + diff.hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    (blobs / _sha(config)[7:]).write_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config), "size": len(config)},
        "layers": descs}).encode()
    (blobs / _sha(manifest)[7:]).write_bytes(manifest)
    Path(out, "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    Path(out, "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
    return raw_total, gz_total


def _run(argv: list[str], **kw: object) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {p.stderr.strip()[-500:]}")
    out: str = p.stdout
    return out


class Bench:
    def __init__(self, mnt: str, report: Report, reps: int) -> None:
        self.mnt = mnt
        self.report = report
        self.reps = reps
        self.stack = contextlib.ExitStack()
        self.store = os.path.join(mnt, "store")
        self.aufs = [sys.executable, "-m", "aufs", "--root", self.store]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                          os.environ.get("PYTHONPATH")]))}
        self.rounds = 0

    def close(self) -> None:
        self.stack.close()

    def prepare(self) -> None:
        base = corpus.base_tarball()
        upper = os.path.join(self.mnt, "upper.tar")
        corpus.write_upper_tarball(base, upper)
        small = os.path.join(self.mnt, "small.tar")
        _small_layer(small)
        layout = os.path.join(self.mnt, "oci")
        raw, gz = build_layout(layout, [base, upper, small])
        self.reg = self.stack.enter_context(daemons.registry(Path(self.mnt, "reg")))
        self.ref = f"{self.reg.address}/{REF_PATH}"
        _run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1",
              f"docker://{self.ref}"])
        self.dockerd = self.stack.enter_context(
            daemons.dockerd(Path(self.mnt, "dk"), "overlay2"))
        self.report.note(f"image: 3 layers, {raw >> 20} MiB as tars, {gz >> 20} MiB gzip "
                         f"(level 6) — bookworm minbase, the upper layer, 4 MiB on top")

    # -- pull ------------------------------------------------------------------------------

    def aufs_pull(self) -> Job:
        def setup() -> None:
            self._drop_store()

        def run() -> None:
            _run([*self.aufs, "pull", self.ref], env=self.env)

        return Job("aufs pull", run, setup)

    def _drop_store(self) -> None:
        if os.path.exists(self.store):
            subprocess.run([*self.aufs, "cleanup"], env=self.env, check=False,
                           capture_output=True)
            shutil.rmtree(self.store)

    def docker_pull(self) -> Job:
        def setup() -> None:
            self.dockerd.run("rmi", "-f", self.ref, check=False)

        def run() -> None:
            self.dockerd.run("pull", "-q", self.ref)

        return Job("docker pull", run, setup)

    # -- push ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _fresh_registry(self) -> Iterator[daemons.Registry]:
        self.rounds += 1
        path = Path(self.mnt, f"push-reg-{self.rounds}")
        with daemons.registry(path) as reg:
            yield reg
        shutil.rmtree(path, ignore_errors=True)

    def push_job(self, label: str, docker: bool) -> Job:
        state: dict[str, object] = {}

        def setup() -> None:
            stack = contextlib.ExitStack()
            reg = stack.enter_context(self._fresh_registry())
            state["stack"], state["target"] = stack, f"{reg.address}/pushed/image:1"
            if docker:
                self.dockerd.run("tag", self.ref, str(state["target"]))

        def run() -> None:
            if docker:
                self.dockerd.run("push", "-q", str(state["target"]))
            else:
                _run([*self.aufs, "push", self.ref, str(state["target"])], env=self.env)

        def teardown() -> None:
            if docker:
                self.dockerd.run("rmi", str(state["target"]), check=False)
            stack = state["stack"]
            assert isinstance(stack, contextlib.ExitStack)
            stack.close()

        return Job(label, run, setup, teardown)

    # -- memory ----------------------------------------------------------------------------

    def peak_rss(self) -> None:
        self._drop_store()
        pulled = run_child([sys.executable, "-c", _RSS_CHILD, "--root", self.store, "pull",
                            self.ref])
        if pulled.returncode != 0:
            raise BenchError(f"aufs pull failed: {pulled.stderr.strip()}")
        with self._fresh_registry() as reg:
            pushed = run_child([sys.executable, "-c", _RSS_CHILD, "--root", self.store,
                                "push", self.ref, f"{reg.address}/rss/image:1"])
        if pushed.returncode != 0:
            raise BenchError(f"aufs push failed: {pushed.stderr.strip()}")
        for what, res in (("pull", pulled), ("push", pushed)):
            kib = res.reported("VmHWM")
            if kib is not None:
                self.report.value(f"peak RSS, aufs {what}", kib / 1024, "MiB",
                                  goal=RSS_GOAL_MIB, note=f"{res.seconds:.1f} s")

    def run(self, only: set[str]) -> None:
        if "pull" in only:
            self.report.add(compare("pull (3 layers)", self.aufs_pull(), self.docker_pull(),
                                    reps=self.reps, goal=GOALS["pull"],
                                    note="from a loopback registry; warm caches"))
        if "push" in only:
            # The store and dockerd both hold the pulled image.
            self._drop_store()
            _run([*self.aufs, "pull", self.ref], env=self.env)
            self.dockerd.run("pull", "-q", self.ref)
            self.report.add(compare("push (fresh registry)", self.push_job("aufs push", False),
                                    self.push_job("docker push", True), reps=self.reps,
                                    goal=GOALS["push"], note="to an empty loopback registry"))
        if "rss" in only:
            self.peak_rss()
        self._drop_store()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.registry", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", action="append", choices=("pull", "push", "rss"))
    args = ap.parse_args(argv)
    require_root()
    require_tools("dockerd", "docker", "docker-registry", "skopeo")
    only = set(args.only or ("pull", "push", "rss"))
    report = Report("registry")
    corpus.base_tarball()  # built (minutes) before the loop filesystem exists
    with loop_ext4(LOOP_BYTES, label="aufs-registry") as mnt:
        bench = Bench(mnt, report, args.reps)
        try:
            bench.prepare()
            bench.run(only)
        finally:
            bench.close()
    report.finish()
    failed = [r for r in report.ratios if r.met is False] + \
        [v for v in report.values if v["met"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    main_guard(main)
