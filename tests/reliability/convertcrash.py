"""Kill ``aufs convert`` at a random moment, then finish the store and check every layer.

A store with a chain of layers full of whiteouts and opaque directories is converted
back and forth (overlay -> aufs -> overlay ...), one direction per trial, by a child
process that gets SIGKILLed. Afterwards ``aufs.init`` either opens the store whole — in
the old format (killed before the journal) or the new one (killed after it finished) —
or refuses it with ``ConversionPendingError``, and then running ``convert`` again must
finish it. Either way: no marker of the other format is left in any layer, the store is
sound, and every layer's ``changes`` and ``diff`` listing equal the ones from before.
"""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
import time
from pathlib import Path

import aufs
from aufs.store import meta
from aufs.store.layout import Layout
from aufs.whiteout import OVERLAY_OPAQUE_XATTR, WH_META_PREFIX, WH_PREFIX
from tests.reliability import invariants
from tests.reliability.crashlib import Crasher, KillRecord, Report, TrialFailure, trial_rng

ENGINE_FOR = {"overlay": "overlay", "aufs": "fuse-overlayfs"}
OTHER = {"overlay": "aufs", "aufs": "overlay"}
LAYERS = 4
Listing = dict[str, tuple[list[str], list[tuple[object, ...]]]]


def _layer_tar(n: int, rng: random.Random) -> bytes:
    """Layer ``n``: new files, deletions of the layer below's files, opaque dirs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, 1_600_000_000 + n, 0o755
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in range(4):
            add(f"d{d}", tarfile.DIRTYPE)
            add(f"d{d}/sub", tarfile.DIRTYPE)
        for f in range(16):
            add(f"d{f % 4}/l{n}-f{f}", data=rng.randbytes(64))
            if n:
                add(f"d{f % 4}/{WH_PREFIX}l{n - 1}-f{f}")  # delete the layer below's
        if n:
            add(f"d{n % 4}/sub/{WH_PREFIX}{WH_PREFIX[1:-1]}{WH_PREFIX}opq")  # opaque
    return buf.getvalue()


def build_store(root: Path, seed: int) -> None:
    rng = random.Random(f"{seed}/convert-content")
    d = aufs.init(root, ["aufs.engine=overlay"])
    try:
        parent = ""
        for n in range(LAYERS):
            layer = f"c{n}"
            d.create(layer, parent)
            d.apply_diff(layer, parent, io.BytesIO(_layer_tar(n, rng)))
            parent = layer
    finally:
        d.cleanup()


def listing(d: aufs.Driver) -> Listing:
    """Every layer's changes and diff members, read through the driver."""
    out: Listing = {}
    for layer in d.ids():
        changes = [str(c) for c in d.changes(layer)]
        with d.diff(layer) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            members = [_member(m) for m in tar]
        out[layer] = (changes, members)
    return out


def open_store(root: Path, fmt: str) -> aufs.Driver:
    return aufs.init(root, [f"aufs.engine={ENGINE_FOR[fmt]}"])


def _member(m: tarfile.TarInfo) -> tuple[object, ...]:
    """A tar member, normalized: a whiteout's mode, owner and time carry no meaning
    (Docker writes overlay whiteouts as 0600, AUFS ones with the file's own mode)."""
    if os.path.basename(m.name).startswith(WH_PREFIX):
        return (m.name, m.type, m.size)
    return (m.name, m.type, m.size, m.mode, m.mtime, m.linkname, m.uid, m.gid)


def foreign_markers(root: Path, fmt: str) -> list[str]:
    """Whiteouts of the format the store is not in."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root / "diff"):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if fmt == "overlay" and name.startswith(WH_PREFIX) and not name.startswith(
                    WH_META_PREFIX):
                found.append(path)
            if fmt == "aufs" and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found.append(path)
            if fmt == "aufs" and stat.S_ISDIR(st.st_mode):
                try:
                    os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False)
                    found.append(f"{path} (opaque xattr)")
                except OSError:
                    pass
    return found


class ConvertCrash:
    def __init__(self, workdir: Path, seed: int) -> None:
        from aufs.convert import convert

        self.root = workdir / "store"
        self.seed = seed
        build_store(self.root, seed)
        d = open_store(self.root, "overlay")
        try:
            self.expected = listing(d)
        finally:
            d.cleanup()
        times = []
        fmt = "overlay"
        for _ in range(2):  # calibrate: one conversion each way
            t0 = time.monotonic()
            convert(self.root, OTHER[fmt])
            times.append(time.monotonic() - t0)
            fmt = OTHER[fmt]
        self.max_delay = min(times)
        self.format = fmt

    def run(self, trials: int, stop_after_failures: int = 3) -> Report:
        report = Report("convert", "overlay<->fuse-overlayfs", self.seed)
        crasher = Crasher()
        start = time.monotonic()
        try:
            for trial in range(trials):
                rng = trial_rng(self.seed, "convert", trial)
                to = OTHER[self.format]
                command = {"mode": "convert", "root": str(self.root), "engine": "auto",
                           "seed": f"{self.seed}/convert/{trial}", "args": {"to": to}}
                rec = crasher.kill_during(command, rng.uniform(0, self.max_delay))
                problems = self.check(rec, to)
                report.trials += 1
                report.phases[rec.phase] += 1
                if problems:
                    report.failures.append(TrialFailure(trial, rec.phase, rec.delay, problems))
                    if len(report.failures) >= stop_after_failures:
                        break
        finally:
            crasher.close()
            report.seconds = time.monotonic() - start
        return report

    def check(self, rec: KillRecord, to: str) -> list[str]:
        from aufs.convert import ConversionPendingError, convert

        stored = meta.read(Layout.at(self.root).meta_file)
        guess = stored.whiteouts if stored is not None else "aufs"
        try:
            d = open_store(self.root, guess)
        except ConversionPendingError:
            try:
                convert(self.root, to)  # run it again: it finishes
                d = open_store(self.root, to)
            except Exception as exc:
                return [f"finishing convert --to {to} after the kill: "
                        f"{type(exc).__name__}: {exc}"]
        except Exception as exc:
            return [f"aufs.init after the kill: {type(exc).__name__}: {exc}"]
        problems: list[str] = []
        try:
            now = d.whiteouts.name
            if now != to and rec.inflight is None and rec.events:
                problems.append(f"convert reported done, but the store is in {now} format")
            self.format = now
            bad = foreign_markers(self.root, now)
            if bad:
                problems.append(f"store in {now} format holds markers of the other: {bad[:4]}")
            problems += invariants.store_problems(str(self.root))
            got = listing(d)
        finally:
            d.cleanup()
        for layer, want in self.expected.items():
            have = got.get(layer, ([], []))
            if have != want:
                what = "changes" if have[0] != want[0] else "diff"
                first = next((f"{a} -> {b}" for a, b in zip(want[1], have[1], strict=False)
                              if a != b),
                             f"{len(want[1])} -> {len(have[1])} members")
                problems.append(f"layer {layer}: {what} differ after the kill ({first})")
        problems += invariants.leak_problems(str(self.root))
        return problems
