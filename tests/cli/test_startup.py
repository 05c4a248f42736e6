"""Start-up: a command imports only what it needs (not timed; ``bench.startup`` times it).

Each case runs the CLI's ``main`` in a fresh interpreter — what the ``aufs`` console
script does — and looks at ``sys.modules`` afterwards.
"""

from __future__ import annotations

import io
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


def _modules(*argv: str, probe: str = _PROBE) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    report = json.loads(p.stderr.splitlines()[-1])
    assert report["code"] == 0, p.stderr
    return set(report["modules"])


def _stdlib(*argv: str) -> set[str]:
    """The modules outside aufs that ``main(argv)`` imported (not there before it)."""
    probe = _PROBE.replace("from aufs.cli import main",
                           "before = set(sys.modules)\nfrom aufs.cli import main")
    probe = probe.replace("m for m in sys.modules if m.startswith(\"aufs\")",
                          "m for m in set(sys.modules) - before if not m.startswith(\"aufs\")")
    assert probe != _PROBE.replace("from aufs.cli import main",
                                   "before = set(sys.modules)\nfrom aufs.cli import main")
    return _modules(*argv, probe=probe)


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
                         "aufs._sys.mount", "aufs._sys.daemon", "aufs.archive.unpack",
                         "aufs._sys.libc", "aufs._sys.fsinfo", "aufs._sys.mountinfo")
                } == set()
        # Nor ctypes (the libc binding), argparse's locale lookups or dataclasses (5 ms:
        # it imports inspect).
        assert not _stdlib("--root", str(cli.root), "diff", "base", "-o",
                           str(tmp_path / "out.tar")) & {"ctypes", "platform", "locale",
                                                         "dataclasses", "inspect"}
    finally:
        cli.ok("cleanup")


def test_export_reads_the_store_without_engines_mounts_or_the_importer(
        tmp_path: Path) -> None:
    """``aufs export`` only reads the store: no engine probe, no bind mount of the root,
    no recovery, and nothing of ``aufs import`` (its decompressors load ctypes)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    cli.ok("create", "base")
    (cli.root / "diff" / "base" / "f").write_bytes(b"x")
    cli.ok("cleanup")  # init's bind of the root undone: export must not make it again
    out = tmp_path / "image.tar"
    loaded = _modules("--root", str(cli.root), "export", "base", "-o", str(out))
    assert "aufs.image.save" in loaded
    assert {m for m in loaded if m.startswith(("aufs.union", "aufs.registry", "aufs.docker"))
            or m in ("aufs.image.load", "aufs.archive.compression", "aufs._sys.mount",
                     "aufs._sys.daemon", "aufs.store.recover")} == set()
    with open("/proc/self/mountinfo") as f:
        assert str(cli.root) not in f.read()
    with tarfile.open(out) as tar:
        assert "index.json" in tar.getnames()
    # Nor ctypes, platform (os.uname says the architecture) or dataclasses (inspect).
    assert not _stdlib("--root", str(cli.root), "export", "base", "-o", str(out)) & {
        "ctypes", "platform", "dataclasses", "inspect"}


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


def test_a_reading_command_ends_at_once_after_exit_hooks_and_flushed_output(
        tmp_path: Path) -> None:
    """``aufs diff`` ends by ``os._exit`` (no interpreter teardown): its whole tar is out,
    the exit hooks ran, and the exit status is the command's. A write command (``create``)
    exits the normal way, hooks too."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    marker = tmp_path / "hook-ran"
    # A sitecustomize registers an exit hook, as site's own .pth files may.
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'a').write(os.environ['WHAT'] + '\\n'))\n")
    cli.ok("create", "base")
    try:
        data = cli.ok("mount", "base").out.strip()
        Path(data, "file").write_bytes(b"x" * 300_000)
        cli.ok("umount", "base")
        for what, args in (("diff", ("diff", "base")), ("create", ("create", "top")),
                           ("missing", ("diff", "nope"))):
            r = cli.run(*args, env={"PYTHONPATH": f"{hooks}:{REPO / 'src'}", "WHAT": what})
            assert r.code == (1 if what == "missing" else 0), r.err
            if what == "diff":
                with tarfile.open(fileobj=io.BytesIO(r.raw)) as tar:
                    member = tar.getmember("file")
                    f = tar.extractfile(member)
                    assert f is not None and f.read() == b"x" * 300_000
        assert marker.read_text().splitlines() == ["diff", "create", "missing"]
    finally:
        cli.ok("cleanup")
