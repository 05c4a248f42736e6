"""``aufs apply ID -`` with stdin redirected from a tar file: big enough that the
extraction's writer process reads the file data (it gets the tar file's fd)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.cli.kit import REPO, Aufs


def test_apply_from_stdin_that_is_a_file(cli: Aufs, tmp_path: Path) -> None:
    tar_path = tmp_path / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(3000):  # past the writer's threshold (2,048 files)
            data = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"d/f{i}")
            info.size = len(data)
            tf.addfile(info, fileobj=io.BytesIO(data))
    cli.ok("create", "x")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(tar_path, "rb") as stdin:
        p = subprocess.run([sys.executable, "-m", "aufs", "--root", str(cli.root), "apply",
                            "x", "-"], stdin=stdin, capture_output=True, env=env,
                           timeout=120, check=False)
    assert p.returncode == 0, p.stderr.decode()
    layer = cli.root / "diff" / "x" / "d"
    assert len(os.listdir(layer)) == 3000
    assert (layer / "f2999").read_bytes() == b"file 2999\n"
