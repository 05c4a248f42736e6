"""Start-up: a command imports only what it needs (not timed; ``bench.startup`` times it).

Each case runs the CLI's ``main`` in a fresh interpreter — what the ``aufs`` console
script does — and looks at ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.cli.kit import REPO, Aufs

_PROBE = """
import json, sys
from aufs.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.startswith("aufs"))}),
      file=sys.stderr)
"""


def _modules(*argv: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    report = json.loads(p.stderr.splitlines()[-1])
    assert report["code"] == 0, p.stderr
    return set(report["modules"])


# The tar machinery, compression, image load/save, the engines and the mount calls.
_HEAVY = ("aufs.archive.apply", "aufs.archive.export", "aufs.archive.compression",
          "aufs.archive.unpack", "aufs.archive.tarread", "aufs.archive.stream",
          "aufs.image.load", "aufs.image.save", "aufs.union", "aufs._sys.mount",
          "aufs._sys.daemon", "aufs.convert", "aufs.store.recover")


def test_version_imports_neither_the_store_nor_archives_nor_images() -> None:
    loaded = _modules("--version")
    unwanted = {m for m in loaded
                if m.split(".")[:2] in (["aufs", "archive"], ["aufs", "image"],
                                        ["aufs", "driver"], ["aufs", "union"])}
    assert not unwanted


def test_help_imports_no_command_module() -> None:
    loaded = _modules("--help")
    assert not loaded & {"aufs.cli.layers", "aufs.cli.streams", "aufs.driver"}


def test_ls_reads_the_store_without_engines_or_tar_machinery(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    cli.ok("create", "base")
    cli.ok("create", "top", "--parent", "base")
    try:
        loaded = _modules("--root", str(cli.root), "ls")
        # ls shows sizes (aufs.archive.changes.diff_size) and names (aufs.image.names),
        # nothing more of those packages; no engine is probed, so none is imported.
        assert {m for m in loaded for h in _HEAVY if m == h or m.startswith(h + ".")} == set()
        assert {m for m in loaded if m.startswith(("aufs.archive.", "aufs.image."))} <= {
            "aufs.archive.types", "aufs.archive.changes", "aufs.archive.treediff",
            "aufs.image.names"}
    finally:
        cli.ok("cleanup")


def test_diff_imports_the_tar_writer_but_no_image_compression_or_engine(
        tmp_path: Path) -> None:
    """``aufs diff ID`` of a layer's own files: the export stream and nothing of images,
    compression, the engines or the mount calls."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    cli.ok("create", "base")
    try:
        loaded = _modules("--root", str(cli.root), "diff", "base", "-o",
                          str(tmp_path / "out.tar"))
        assert "aufs.archive.export" in loaded
        assert {m for m in loaded if m.startswith(("aufs.image", "aufs.union",
                                                   "aufs.registry", "aufs.docker"))
                or m in ("aufs.archive.compressor", "aufs.archive.compression",
                         "aufs._sys.mount", "aufs._sys.daemon", "aufs.archive.unpack")
                } == set()
    finally:
        cli.ok("cleanup")


def test_ls_of_a_store_that_is_not_one_yet_makes_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "new")
    try:
        assert cli.ok("ls").out == ""
        assert (cli.root / ".aufs" / "store.json").exists()
    finally:
        cli.ok("cleanup")


def test_public_names_are_there_when_asked_for() -> None:
    code = ("import aufs, json; import aufs.graphdriver as g; "
            "print(json.dumps([aufs.MS_REMOUNT, aufs.init.__name__, aufs.Driver.__name__, "
            "callable(aufs.unmount), issubclass(aufs.AufsNotSupportedError, "
            "g.NotSupportedError), sorted(set(aufs.__all__) - set(dir(aufs))), "
            "g.drivers()]))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout
    assert json.loads(out) == [32, "init", "Driver", True, True, [], ["aufs"]]
    with pytest.raises(AttributeError):
        import aufs

        _ = aufs.no_such_name


def test_a_reader_that_must_mount_prepares_the_store_first(tmp_path: Path) -> None:
    """changes against a grandparent mounts both trees (the naive path): the store opened
    for reading probes its engine then, and leaves no mount behind."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    src = tmp_path / "f.tar"
    try:
        cli.ok("create", "a")
        cli.ok("create", "b", "--parent", "a")
        cli.ok("create", "c", "--parent", "b")
        path = Path(cli.ok("mount", "c").out.strip())
        (path / "new").write_bytes(b"x")
        cli.ok("umount", "c")
        assert cli.ok("changes", "c", "--parent", "a").out.splitlines() == ["A /new"]
        with open(src, "wb") as f:
            f.write(cli.ok("diff", "c", "--parent", "a").raw)
        with tarfile.open(src) as tar:
            assert tar.getnames() == ["new"]
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(cli.root) not in mounts
    finally:
        cli.ok("cleanup")
