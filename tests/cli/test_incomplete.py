"""A layer an import or pull was applying when it died (kill -9, a crash) is marked by
``.aufs/incomplete/<id>``: a later import takes it away and applies it anew, a live
importer's marker stops a second import with one line, and ``aufs check`` reports it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.cli.kit import Aufs, chain_ids, layer, oci_files, write_tar

BASE = layer({"etc/hostname": b"base\n", "bin/sh": b"#!sh\n"})
APP = layer({"app/run": b"run\n"})


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _crashed(cli: Aufs, pid: int) -> str:
    """The store as an import that died while applying the base layer left it."""
    base = chain_ids([BASE])[0]
    cli.ok("create", base)
    marker = cli.root / ".aufs" / "incomplete"
    marker.mkdir(parents=True, exist_ok=True)
    (marker / base).write_text(f"{pid}\n")
    return base


def test_import_replaces_a_layer_a_dead_import_left(cli: Aufs, tmp_path: Path) -> None:
    base = _crashed(cli, _dead_pid())
    top = cli.ok("import", str(write_tar(oci_files([BASE, APP]), tmp_path / "a.tar"))).out
    mnt = Path(cli.ok("mount", top.strip()).out.strip())
    try:
        assert (mnt / "bin" / "sh").read_bytes() == b"#!sh\n"
        assert (mnt / "app" / "run").read_bytes() == b"run\n"
    finally:
        cli.ok("umount", top.strip())
    assert not (cli.root / ".aufs" / "incomplete" / base).exists()
    assert cli.ok("check").code == 0


def test_a_live_importer_stops_a_second_import(cli: Aufs, tmp_path: Path) -> None:
    base = _crashed(cli, os.getpid())  # this test process: alive
    line = cli.fails(1, "import", str(write_tar(oci_files([BASE, APP]), tmp_path / "a.tar")))
    assert line == f"aufs: layer {base} is being imported by pid {os.getpid()}"
    assert (cli.root / ".aufs" / "incomplete" / base).exists()


def test_check_reports_and_repair_removes_the_half_applied_layer(cli: Aufs) -> None:
    base = _crashed(cli, _dead_pid())
    cli.ok("create", "child", "--parent", base)
    bad = cli.root / ".aufs" / "incomplete" / "not an id"
    bad.write_text("1\n")
    r = cli.run("check")
    assert r.code == 1 and f"incomplete import of layer {base}" in r.out, r.out
    kinds = sorted(p["kind"] for p in cli.run("check", "--json").json()["problems"])
    assert kinds == ["bad-name", "incomplete"]
    r = cli.run("check", "--repair")  # a layer stands on it: left
    assert r.code == 1 and (cli.root / "layers" / base).exists() and not bad.exists()
    cli.ok("rm", "child")
    cli.ok("check", "--repair")
    assert not (cli.root / "layers" / base).exists()
    assert cli.ok("check").code == 0
