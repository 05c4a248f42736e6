"""Helpers for CLI tests: run ``python3 -m aufs`` in a subprocess; build image archives."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str
    raw: bytes

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


class Aufs:
    """``aufs --root ROOT ...`` in a subprocess."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _argv(self, args: tuple[str, ...], root: bool = True) -> list[str]:
        argv = [sys.executable, "-m", "aufs"]
        if root:
            argv += ["--root", str(self.root)]
        return [*argv, *args]

    @staticmethod
    def _env(env: dict[str, str] | None = None) -> dict[str, str]:
        # This checkout's package, whatever the editable install points at.
        path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, **(env or {})}

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """``aufs --root ROOT ARGS`` started, its stdout and stderr pipes (text)."""
        return subprocess.Popen(self._argv(args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self._env())

    def run(self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
            root: bool = True) -> Result:
        p = subprocess.run(self._argv(args, root), input=stdin, capture_output=True,
                           timeout=120, env=self._env(env), check=False)
        return Result(p.returncode, p.stdout.decode(errors="replace"),
                      p.stderr.decode(errors="replace"), p.stdout)

    def ok(self, *args: str, stdin: bytes | None = None) -> Result:
        r = self.run(*args, stdin=stdin)
        assert r.code == 0, f"aufs {' '.join(args)} failed ({r.code}): {r.err}"
        assert "Traceback" not in r.err
        return r

    def fails(self, code: int, *args: str, stdin: bytes | None = None) -> str:
        """Run a command that must fail with ``code`` and one stderr line; return it."""
        r = self.run(*args, stdin=stdin)
        assert r.code == code, f"aufs {' '.join(args)}: exit {r.code}, stderr {r.err!r}"
        assert "Traceback" not in r.err
        assert len(r.err_lines) == 1, r.err
        return r.err_lines[0]


# -- image archives ---------------------------------------------------------------------

def _load_sample() -> Any:
    spec = importlib.util.spec_from_file_location("build_sample",
                                                  REPO / "examples" / "build_sample.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sample = _load_sample()


def layer(files: dict[str, bytes], deletions: tuple[str, ...] = ()) -> bytes:
    """An uncompressed layer tar of ``files`` (name -> content) plus whiteouts."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:
            tar.addfile(sample._info(d, tarfile.DIRTYPE, 0o755))
        for name, data in sorted(files.items()):
            tar.addfile(sample._info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        for gone in deletions:
            p = Path(gone)
            tar.addfile(sample._info(str(p.parent / (".wh." + p.name)), tarfile.REGTYPE, 0o644))
    return buf.getvalue()


def oci_files(layers: list[bytes], tag: str = "latest") -> dict[str, bytes]:
    files: dict[str, bytes] = sample.oci_layout(layers, tag)
    return files


def write_dir(files: dict[str, bytes], out: Path) -> Path:
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return out


def write_tar(files: dict[str, bytes], out: Path) -> Path:
    sample.write_tar(files, str(out))
    return out


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_save_files(layers: list[bytes], diff_ids: list[str] | None = None) -> dict[str, bytes]:
    """A classic ``docker save`` tarball: <v1 id>/layer.tar, <config sha>.json, manifest.json."""
    files: dict[str, bytes] = {}
    names = []
    for i, tar in enumerate(layers):
        v1 = hashlib.sha256(b"v1-%d" % i + tar).hexdigest()
        files[f"{v1}/layer.tar"] = tar
        files[f"{v1}/VERSION"] = b"1.0"
        names.append(f"{v1}/layer.tar")
    ids = diff_ids if diff_ids is not None else [sha256(t) for t in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ids}}).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    files[cname] = config
    files["manifest.json"] = json.dumps(
        [{"Config": cname, "RepoTags": ["sample:latest"], "Layers": names}]).encode()
    return files


def chain_ids(layers: list[bytes]) -> list[str]:
    out: list[str] = []
    for tar in layers:
        d = sha256(tar)
        out.append(d if not out else sha256(f"{out[-1]} {d}".encode()))
    return [c.removeprefix("sha256:") for c in out]
