"""Hostile layer tarballs, and a harness that applies one and checks every promise.

The harness keeps a store in ``workdir/store`` with a layer ``L`` (child of ``P``) whose
own files include symlinks that point out of the layer (relative ``../../../victim``
and absolute ``/proc/self/cwd/victim``, which lands in ``workdir/victim`` because the
harness runs with ``workdir`` as its working directory). After each apply:

- only ``ArchiveError`` (``BreakoutError`` included) may escape;
- ``workdir/victim`` is exactly as before and nothing else outside ``diff/L`` changed;
- after a failure ``diff/L`` is exactly as before (times included).

The corpus here is shared by the CI test (``test_hostile.py``), the fuzzer's seed corpus
(``fuzz/make_corpus.py``) and the fuzzer itself (``fuzz/apply_fuzz.py``).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aufs
from aufs._sys.files import rmtree
from aufs.archive import ArchiveError
from tests.reliability import invariants

VICTIM_REL = "../../../victim"      # from diff/L/<entry>: workdir/victim
VICTIM_ABS = "/proc/self/cwd/victim"  # the harness's cwd is workdir


# -- building tars ----------------------------------------------------------------------

Entry = tuple[str, bytes, str, bytes]  # (name, type, linkname, data)


def _tar(entries: list[Entry], pax: dict[str, dict[str, str]] | None = None,
         fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, link, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_600_000_000
            info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
            if pax and name in pax:
                info.pax_headers = dict(pax[name])
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return _compact(buf.getvalue())


def _compact(tar: bytes) -> bytes:
    """Drop the record padding past the two end blocks (small seeds fuzz better)."""
    body = tar.rstrip(b"\0")
    return body + b"\0" * (-len(body) % 512 + 1024)


def _f(name: str, data: bytes = b"pwned\n") -> Entry:
    return (name, tarfile.REGTYPE, "", data)


def _d(name: str) -> Entry:
    return (name, tarfile.DIRTYPE, "", b"")


def _s(name: str, target: str) -> Entry:
    return (name, tarfile.SYMTYPE, target, b"")


def _h(name: str, target: str) -> Entry:
    return (name, tarfile.LNKTYPE, target, b"")


def breakouts() -> dict[str, bytes]:
    """Every way out we know of, after Docker's pkg/archive breakout tests and more.

    Each must raise ``BreakoutError`` (or, for the few marked ``ok-``, may succeed) and
    in no case touch anything outside ``diff/L``.
    """
    cases: dict[str, list[Entry]] = {
        # names that leave the layer
        "dotdot": [_f("../victim/hello")],
        "slash-dotdot": [_f("/../victim/hello")],
        "deep-dotdot": [_f("a/b/../../../victim/hello")],
        "dotdot-dir": [_d("../victim/newdir")],
        "dotdot-symlink": [_s("../victim/link", "/etc/passwd")],
        "dotdot-whiteout": [_f("../victim/.wh.hello", b"")],
        "whiteout-of-dot": [_f(".wh..", b"")],
        "whiteout-of-dot-in-dir": [_d("keep"), _f("keep/.wh..", b"")],
        "whiteout-of-dotdot": [_f(".wh...", b"")],
        "whiteout-of-dotdot-in-dir": [_d("keep"), _f("keep/.wh...", b"")],
        "whiteout-of-nothing": [_f(".wh.", b"")],
        "whiteout-of-nothing-in-dir": [_d("keep"), _f("keep/.wh.", b"")],
        "dotdot-opaque": [_f("../victim/.wh..wh..opq", b"")],
        # hard links out of the layer, to nothing, to a symlink that leads out
        "hardlink-dotdot": [_h("dotdot", "../victim/hello")],
        "hardlink-abs": [_h("abs", "/proc/self/cwd/victim/hello")],
        "hardlink-missing": [_h("nothing", "no/such/file")],
        "hardlink-lower": [_h("lowerlink", "lowerfile")],
        "hardlink-dir": [_d("adir"), _h("dirlink", "adir")],
        "hardlink-to-symlink-then-write": [
            _s("sym", VICTIM_REL + "/hello"), _h("loophole", "sym"), _f("loophole")],
        "hardlink-through-symlink-dir": [
            _s("symdir", VICTIM_REL), _h("through", "symdir/hello")],
        "hardlink-into-existing-symlink-dir": [_h("through2", "escape/hello")],
        # symlinks the archive makes, then uses
        "symlink-rel-then-write": [_s("loophole", VICTIM_REL), _f("loophole/hello")],
        "symlink-abs-then-write": [_s("loophole", VICTIM_ABS), _f("loophole/hello")],
        "symlink-then-mkdir": [_s("loophole", VICTIM_REL), _d("loophole/newdir")],
        "symlink-then-symlink": [_s("loophole", VICTIM_REL), _s("loophole/link", "/")],
        "symlink-then-whiteout": [_s("loophole", VICTIM_REL), _f("loophole/.wh.hello", b"")],
        "symlink-then-opaque": [_s("loophole", VICTIM_REL),
                                _f("loophole/.wh..wh..opq", b"")],
        "symlink-chain": [_s("a", "b"), _s("b", VICTIM_REL), _f("a/hello")],
        "symlink-file-then-overwrite": [_s("target", VICTIM_REL + "/hello"), _f("target")],
        "symlink-to-dotdot-then-write": [_d("x"), _s("x/up", ".."), _s("x/up2", "../.."),
                                         _f("x/up2/up2/victim/hello")],
        # symlinks already in the layer
        "existing-symlink-write": [_f("escape/hello")],
        "existing-abs-symlink-write": [_f("escape-abs/hello")],
        "existing-symlink-mkdir": [_d("escape/newdir")],
        "existing-symlink-whiteout": [_f("escape/.wh.hello", b"")],
        "existing-symlink-opaque": [_f("escape/.wh..wh..opq", b"")],
        "existing-symlink-chmod-dir": [_d("escape")],
        "existing-file-symlink-overwrite": [_f("escape-file", b"overwritten\n")],
        "existing-symlink-hardlink-over": [_f("plain"), _h("escape-file", "plain")],
        "existing-symlink-deep": [_f("escape/sub/deeper")],
        # long names (PAX / GNU) carrying a way out
        "pax-path-dotdot": [_f("innocent")],
        "gnu-longname-dotdot": [_f("d/" + "x" * 120 + "/../../../../victim/hello")],
        "pax-linkpath-dotdot": [_h("innocent-link", "placeholder")],
    }
    pax = {
        "pax-path-dotdot": {"innocent": {"path": "../victim/hello"}},
        "pax-linkpath-dotdot": {"innocent-link": {"linkpath": "../victim/hello"}},
    }
    out: dict[str, bytes] = {}
    for name, entries in cases.items():
        fmt = tarfile.GNU_FORMAT if name.startswith("gnu-") else tarfile.PAX_FORMAT
        out[name] = _tar(entries, pax.get(name), fmt)
    out["gzip-dotdot"] = gzip.compress(out["dotdot"], mtime=0)
    out["bzip2-symlink-rel-then-write"] = bz2.compress(out["symlink-rel-then-write"])
    out["xz-existing-symlink-write"] = lzma.compress(out["existing-symlink-write"])
    return out


def malformed() -> dict[str, bytes]:
    """Input that is not a whole tar: ``ArchiveError``, the layer untouched."""
    good = real_layer_tar()
    cases = {
        "garbage": b"this is not a tarball at all\n" * 20,
        "half-header": good[:300],
        "truncated-data": good[: 512 + 100],
        "truncated-late": good[: len(good) * 2 // 3],
        "bad-checksum": good[:148] + b"9999999\0" + good[156:],
        "gzip-truncated": gzip.compress(good, mtime=0)[:200],
        "gzip-garbage": b"\x1f\x8b\x08\x00" + b"\xff" * 200,
        "xz-truncated": lzma.compress(good)[:150],
        "bzip2-garbage": b"BZh9" + b"\x00" * 300,
        "zstd-garbage": b"\x28\xb5\x2f\xfd" + b"\x01" * 200,
        "size-overflow": _patched_size(good, b"77777777777\0"),
    }
    return cases


def _patched_size(tar: bytes, field12: bytes) -> bytes:
    """``tar`` with the size field of its first regular file's header replaced."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        at = next(m.offset for m in tf.getmembers() if m.isreg())
    header = bytearray(tar[at:at + 512])
    header[124:136] = field12
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return tar[:at] + bytes(header) + tar[at + 512:]


def real_layer_tar() -> bytes:
    """A plausible image layer: dirs, files, links, whiteouts, an opaque dir, a fifo."""
    rng = random.Random(3)
    entries: list[Entry] = [
        _d("etc"), _f("etc/hostname", b"box\n"), _f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        _d("usr"), _d("usr/bin"), _f("usr/bin/tool", rng.randbytes(3000)),
        _h("usr/bin/tool-alias", "usr/bin/tool"), _s("bin", "usr/bin"),
        _s("etc/mtab", "/proc/mounts"), _f(".wh.lowerfile", b""),
        _d("opaque"), _f("opaque/.wh..wh..opq", b""), _f("opaque/new", b"n\n"),
        ("run", tarfile.DIRTYPE, "", b""), ("run/fifo", tarfile.FIFOTYPE, "", b""),
        _f("d/" + "long" * 40, b"long name\n"),
    ]
    return _tar(entries)


def seeds() -> dict[str, bytes]:
    """The fuzzer's seed corpus: real layers in every compression, breakouts, bad input."""
    real = real_layer_tar()
    out = {"real-layer": real, "real-layer-gzip": gzip.compress(real, mtime=0),
           "real-layer-bzip2": bz2.compress(real), "real-layer-xz": lzma.compress(real)}
    with contextlib.suppress(ImportError):
        import zstandard  # type: ignore[import-not-found, unused-ignore]

        out["real-layer-zstd"] = zstandard.ZstdCompressor().compress(real)
    out.update({f"breakout-{k}": v for k, v in breakouts().items()})
    out.update({f"malformed-{k}": v for k, v in malformed().items()})
    return out


# -- the harness ------------------------------------------------------------------------

class Finding(AssertionError):
    """A promise of apply_diff that did not hold."""


@dataclass
class Outcome:
    ok: bool                   # apply_diff returned
    error: str = ""            # the ArchiveError's class and message
    notes: list[str] = field(default_factory=list)


def _populate_layer(diff: str, lower: str) -> None:
    with open(os.path.join(lower, "lowerfile"), "w") as f:
        f.write("lower\n")
    os.mkdir(os.path.join(lower, "lowerdir"))
    _populate_layer_only(diff)


def _populate_victim(victim: Path) -> None:
    victim.mkdir()
    (victim / "hello").write_text("victim's file\n")
    (victim / "sub").mkdir()
    (victim / "sub" / "deeper").write_text("deeper\n")
    os.chmod(victim, 0o750)


class ApplyHarness:
    """Apply untrusted bytes to layer ``L`` and check the promises. Work in ``workdir``
    (the process's cwd must be ``workdir`` for the absolute escapes to aim at the victim;
    :meth:`running` sees to it)."""

    def __init__(self, workdir: Path, engine: str = "overlay", *,
                 from_file: bool = False) -> None:
        self.workdir = workdir
        self.from_file = from_file  # apply from a tar file (what the writer process needs)
        workdir.mkdir(parents=True, exist_ok=True)
        self.root = workdir / "store"
        self.victim = workdir / "victim"
        _populate_victim(self.victim)
        self.d = aufs.init(self.root, [f"aufs.engine={engine}"])
        self.d.create("P")
        self.d.create("L", "P")
        _populate_layer(self.d.layout.diff("L"), self.d.layout.diff("P"))
        # Another apply's staging dir (this process is alive, so recovery keeps it):
        # nothing this apply does may touch it.
        self.sentinel = f"apply-other-{os.getpid()}"
        os.makedirs(os.path.join(self.d.layout.staging(self.sentinel), "work"))
        Path(self.d.layout.staging(self.sentinel), "work", "file").write_text("busy\n")
        self.layer_before = invariants.snapshot(self.d.layout.diff("L"))
        self.victim_before = invariants.snapshot(str(self.victim))
        self.outside_before = self._outside()
        self.dirty = False

    @contextlib.contextmanager
    def running(self) -> Iterator[ApplyHarness]:
        old = os.getcwd()
        os.chdir(self.workdir)
        try:
            yield self
        finally:
            os.chdir(old)
            self.close()

    def close(self) -> None:
        self.d.cleanup()
        with contextlib.suppress(OSError):
            rmtree(self.d.layout.staging(self.sentinel))

    def _outside(self) -> dict[str, invariants.Node]:
        snap = invariants.without_dir_times(invariants.snapshot(str(self.root)))
        mine = f".aufs/staging/{self.sentinel}"
        return {k: v for k, v in snap.items()
                if not k.startswith(("diff/L/", ".aufs/staging/")) or k.startswith(mine)
                if k not in ("diff/L", ".aufs/lock")}

    def reset(self) -> None:
        """Put ``L`` back as it was (after an apply that succeeded)."""
        d = self.d
        d.remove("L")
        d.create("L", "P")
        diff = d.layout.diff("L")
        _populate_layer_only(diff)
        self.layer_before = invariants.snapshot(diff)
        self.outside_before = self._outside()
        self.dirty = False

    def apply(self, data: bytes, *, limit: Callable[[OSError], bool] | None = None) -> Outcome:
        """Apply ``data``; raise :class:`Finding` if a promise is broken."""
        if self.dirty:
            self.reset()
        outcome = Outcome(ok=False)
        wrong: BaseException | None = None
        try:
            if self.from_file:
                tar = self.workdir / "layer.tar"
                tar.write_bytes(data)
                with open(tar, "rb") as f:
                    self.d.apply_diff("L", "P", f)
            else:
                self.d.apply_diff("L", "P", io.BytesIO(data))
            outcome.ok = True
            self.dirty = True
        except ArchiveError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            if limit is not None and limit(exc):  # the harness's own space limit
                outcome.error = f"resource: {exc}"
            else:
                wrong = exc
        except Exception as exc:
            wrong = exc
        if wrong is not None:
            outcome.error = f"{type(wrong).__name__}: {wrong}"
        self.check(outcome)  # what was touched first: it says more than the error type
        if wrong is not None:
            raise Finding(f"apply_diff raised {type(wrong).__name__}, not ArchiveError: "
                          f"{wrong!r}") from wrong
        return outcome

    def check(self, outcome: Outcome) -> None:
        victim = invariants.snapshot(str(self.victim))
        if victim != self.victim_before:
            raise Finding("the victim outside the store changed: "
                          + invariants.snapshot_diff(self.victim_before, victim))
        outside = self._outside()
        if outside != self.outside_before:
            raise Finding("the store changed outside diff/L: "
                          + invariants.snapshot_diff(self.outside_before, outside))
        staging = [n for n in os.listdir(self.d.layout.staging_dir) if n != self.sentinel]
        if staging:
            raise Finding(f"apply left staging behind: {staging}")
        diff = self.d.layout.diff("L")
        if not os.path.isdir(diff) or os.path.islink(diff):
            raise Finding("diff/L is no longer a directory")
        if outcome.ok:
            self._check_no_victim_inside(diff)
        if not outcome.ok:
            layer = invariants.snapshot(diff)
            if layer != self.layer_before:
                raise Finding(f"a failed apply changed the layer ({outcome.error}): "
                              + invariants.snapshot_diff(self.layer_before, layer))


    def _check_no_victim_inside(self, diff: str) -> None:
        """Nothing in the layer is (a hard link to) or holds a copy of a victim file."""
        victims = {}
        for dirpath, _, files in os.walk(self.victim):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                with open(os.path.join(dirpath, name), "rb") as f:
                    victims[(st.st_dev, st.st_ino)] = f.read()
        contents = set(victims.values())
        for dirpath, _, files in os.walk(diff):
            for name in files:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) in victims:
                    raise Finding(f"{path} is a hard link to a file outside the layer")
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        if f.read(4096) in contents:
                            raise Finding(f"{path} holds a copy of a file outside the layer")


def _populate_layer_only(diff: str) -> None:
    os.mkdir(os.path.join(diff, "keep"))
    with open(os.path.join(diff, "keep", "data"), "w") as f:
        f.write("kept\n")
    with open(os.path.join(diff, "plain-old"), "w") as f:
        f.write("old\n")
    os.symlink(VICTIM_REL, os.path.join(diff, "escape"))
    os.symlink(VICTIM_ABS, os.path.join(diff, "escape-abs"))
    os.symlink(VICTIM_REL + "/hello", os.path.join(diff, "escape-file"))


def is_space_error(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# -- structured inputs: tars built from fuzzer bytes ------------------------------------

COMPONENTS = (
    "a", "b", "keep", "data", "escape", "escape-abs", "escape-file", "plain-old",
    "lowerfile", "lowerdir", "victim", "hello", "sub", "..", ".", "", ".wh.a", ".wh.keep",
    ".wh.escape", ".wh.lowerfile", ".wh..wh..opq", ".wh..wh.plnk", ".wh..wh.aufs", ".wh..",
    ".wh...", ".wh.", "x" * 200, "ü", "a\\b", " ",
)
TARGETS = (
    VICTIM_REL, VICTIM_ABS, VICTIM_REL + "/hello", "/", "/etc/passwd", "..", ".", "", "a",
    "a/b", "keep", "keep/data", "escape", "escape/hello", "../victim/hello", "lowerfile",
    "plain-old", "nonexistent", ".wh..wh.plnk/1", "/proc/self/cwd/victim/hello",
)
_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
          tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.REGTYPE, tarfile.DIRTYPE)
_MODES = (0o644, 0o755, 0o4755, 0o000, 0o777, 0o1777, 0o600)


class _Reader:
    """Turns fuzzer bytes into choices (zeros once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def below(self, n: int) -> int:
        return self.byte() % n

    def pick(self, options: tuple[str, ...] | tuple[bytes, ...] | tuple[int, ...]) -> object:
        return options[self.below(len(options))]

    def text(self, options: tuple[str, ...]) -> str:
        return options[self.below(len(options))]


def structured_tar(data: bytes) -> bytes:
    """A tar whose entries (names, types, links, modes, PAX records) the bytes choose
    from the tricky parts above: far more of them reach the extractor's logic than of
    raw byte mutations, which mostly die on the header checksum."""
    r = _Reader(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for _ in range(1 + r.below(10)):
            name = "/".join(r.text(COMPONENTS) for _ in range(1 + r.below(4)))
            name = ("", "/", "./")[r.below(3)] + name
            info = tarfile.TarInfo(name or ".")
            info.type = _TYPES[r.below(len(_TYPES))]
            info.mode = _MODES[r.below(len(_MODES))]
            info.mtime = 1_600_000_000 + r.byte()
            info.uid, info.gid = r.below(3) * 1000, r.below(3) * 1000
            if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = r.text(TARGETS)
            if info.type == tarfile.CHRTYPE:
                info.devmajor, info.devminor = r.below(2), r.below(4)
            extra = r.below(8)
            if extra == 1:
                info.pax_headers = {"path": r.text(TARGETS)}
            elif extra == 2:
                info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
            elif extra == 3:
                info.pax_headers = {"SCHILY.xattr.user.note": "x" * r.byte()}
            payload = bytes(r.byte() for _ in range(r.below(16)))
            if info.type == tarfile.REGTYPE:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return _compact(buf.getvalue())
