"""The extractor's memory does not grow with the number of files of a layer (issue 17: a
200,000-file layer applied under 64 MiB): the peak of Python allocations (tracemalloc)
while extracting N small files and while extracting 4N stay within a fixed bound of
each other. Not a timing test.

Both ways the driver extracts: from a stream (this process writes every file) and from
a tar file as root (a writer process writes most of them: what this process remembers
of the files sent to it must stay bounded too).
"""

from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from aufs.archive import unpack
from aufs.archive.apply import extract
from aufs.whiteout import OVERLAY

DIRS = 10
SMALL = 2500
# Allowed growth of the peak from SMALL to 4 * SMALL files: 7,500 more files at the
# 200-350 bytes each that per-file bookkeeping cost were 1.5-2.5 MB. (The writer's lag,
# a constant — what the pipe to it holds —, is part of the peak and may differ.)
BOUND = 640_000


def _tar(files: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for d in range(DIRS):
            info = tarfile.TarInfo(f"./d{d:03}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
            for n in range(files // DIRS):
                data = b"x" * (n % 700)
                info = tarfile.TarInfo(f"./d{d:03}/file-{n:06}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _peak(tmp_path: Path, files: int, from_file: bool) -> tuple[int, int | None]:
    """(peak traced bytes, returned size) of extracting ``files`` files into a new dir."""
    data = _tar(files)
    root = tmp_path / f"root-{files}"
    root.mkdir(parents=True)
    path = tmp_path / f"layer-{files}.tar"
    path.write_bytes(data)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(path, "rb") if from_file else io.BytesIO(data) as stream:
            tracemalloc.start()
            try:
                size = extract(fd, stream, OVERLAY, made={})
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    finally:
        os.close(fd)
    assert sum(1 for _ in (root / "d000").iterdir()) == files // DIRS
    return peak, size


@pytest.mark.parametrize("from_file", [False, True], ids=["stream", "file"])
def test_memory_of_an_apply_does_not_grow_with_the_file_count(
        tmp_path: Path, from_file: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if from_file:
        if os.geteuid() != 0:
            pytest.skip("the writer process runs for root only")
        monkeypatch.setattr(unpack, "OFFLOAD_BYTES", 0)  # from the first file on
    _peak(tmp_path / "warm", SMALL, from_file)  # imports, caches: not the extraction's
    small, small_size = _peak(tmp_path, SMALL, from_file)
    big, big_size = _peak(tmp_path, 4 * SMALL, from_file)
    assert big - small < BOUND, f"{SMALL} files: peak {small} B; {4 * SMALL}: {big} B"
    per_dir = SMALL // DIRS
    assert small_size == DIRS * sum(n % 700 for n in range(per_dir))
    assert big_size == DIRS * sum(n % 700 for n in range(4 * per_dir))
