"""The progress bar: bytes and entries on a terminal, silence anywhere else.

The CLI runs with stderr on a pseudo-terminal. tqdm throttles redraws to one per 0.1 s,
which a small archive finishes within; ``TQDM_MININTERVAL=0``/``TQDM_MINITERS=1`` (tqdm's
own environment overrides) make it draw on every update so the counts can be read back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.kit import REPO, Aufs, layer, oci_files, write_tar

_FILES = {f"d/f{i:03}": b"x" * 3000 for i in range(40)}
_ENTRIES = len(_FILES) + 1  # the files and their directory


def _on_tty(cli: Aufs, *args: str) -> tuple[int, str]:
    """Run ``aufs ARGS`` with stderr on a pty; exit code and everything drawn there."""
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_MININTERVAL": "0",
           "TQDM_MINITERS": "1", "COLUMNS": "200"}
    try:
        p = subprocess.Popen([sys.executable, "-m", "aufs", "--root", str(cli.root), *args],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                             env=env)
        os.close(slave)
        slave = -1
        drawn = bytearray()
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            drawn += chunk
        code = p.wait(timeout=120)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return code, drawn.decode(errors="replace")


def _last_entries(drawn: str) -> int:
    counts = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) entries", drawn)]
    assert counts, f"no entry count drawn: {drawn!r}"
    return counts[-1]


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar"
    path.write_bytes(layer(_FILES))
    return path


def test_apply_and_diff_show_bytes_and_entries(cli: Aufs, tarball: Path, tmp_path: Path) -> None:
    code, drawn = _on_tty(cli, "apply", "base", str(tarball))
    assert code == 0, drawn
    assert "apply" in drawn and re.search(r"\d+(\.\d+)?k?B", drawn), drawn
    assert _last_entries(drawn) == _ENTRIES

    code, drawn = _on_tty(cli, "diff", "base", "-o", str(tmp_path / "out.tar"))
    assert code == 0, drawn
    assert "diff" in drawn
    assert _last_entries(drawn) == _ENTRIES


def test_import_and_export_count_entries_of_every_layer(cli: Aufs, tmp_path: Path) -> None:
    layers = [layer(_FILES), layer({"top/a": b"a", "top/b": b"b"})]
    archive = write_tar(oci_files(layers), tmp_path / "image.tar")
    code, drawn = _on_tty(cli, "import", str(archive))
    assert code == 0, drawn
    assert _last_entries(drawn) == _ENTRIES + 3

    top = cli.ok("ls", "--json").json()
    top_id = next(e["id"] for e in top if e["parent"])
    code, drawn = _on_tty(cli, "export", top_id, "-o", str(tmp_path / "out.tar"))
    assert code == 0, drawn
    assert _last_entries(drawn) == _ENTRIES + 3


def test_quiet_when_stderr_is_not_a_terminal(cli: Aufs, tarball: Path, tmp_path: Path) -> None:
    r = cli.ok("apply", "base", str(tarball))
    assert r.err == ""
    r = cli.ok("diff", "base", "-o", str(tmp_path / "out.tar"))
    assert r.err == ""
