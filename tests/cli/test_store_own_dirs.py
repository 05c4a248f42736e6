"""A directory inside ``.aufs/`` planted as a symlink to a host directory: no command
writes, removes or counts anything there; each says so in one line, and ``aufs check
--repair`` removes the symlink (the host directory untouched)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.cli.kit import Aufs, write_tar


def _plant(cli: Aufs, name: str, host: Path) -> None:
    path = cli.root / ".aufs" / name
    if path.is_dir():
        shutil.rmtree(path)
    path.symlink_to(host)


def _tree(top: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(top)): p.read_bytes() if p.is_file() else None
            for p in sorted(top.rglob("*"))}


# (directory planted, what the host directory holds, the command that used to touch it)
CASES = [
    ("work", ("x/keep",), ("create", "--parent", "base", "x")),  # rmtree'd host/x
    ("refs", ("base",), ("mount", "base")),                    # wrote a count into host/base
    ("images", ("base.json",), ("rm", "base")),                # unlinked host/base.json
    ("tar-split", ("base",), ("rm", "base")),                  # unlinked host/base
    ("staging", (), ("apply", "y")),                           # extracted into host/
    ("attic", ("gone/keep",), ("convert", "--to", "aufs")),    # rmtree'd host/gone
    ("convert", ("gone.json",), ("convert", "--to", "aufs")),  # unlinked host/gone.json
]


@pytest.mark.parametrize(("name", "files", "args"), CASES, ids=[c[0] for c in CASES])
def test_a_symlinked_own_dir_is_refused(cli: Aufs, tmp_path: Path, name: str,
                                        files: tuple[str, ...], args: tuple[str, ...]) -> None:
    cli.ok("create", "base")
    host = tmp_path / "host"
    for f in files:
        (host / f).parent.mkdir(parents=True, exist_ok=True)
        (host / f).write_bytes(b"host file\n")
    host.mkdir(exist_ok=True)
    before = _tree(host)
    _plant(cli, name, host)
    stdin = None
    if args[0] == "apply":
        stdin = write_tar({"f": b"data"}, tmp_path / "l.tar").read_bytes()
    line = cli.fails(1, *args, stdin=stdin)
    assert f".aufs/{name}: is a symlink" in line
    assert _tree(host) == before

    out = cli.run("check").out
    assert f"not-a-dir: .aufs/{name}: is a symlink" in out
    assert "repaired: .aufs/" in cli.run("check", "--repair").out
    assert not os.path.islink(cli.root / ".aufs" / name)
    assert _tree(host) == before
    cli.ok("create", "--parent", "base", "z")  # usable again
