"""NaiveDiffDriver.apply_diff: extraction into the mounted layer (Docker's UnpackLayer on a
union): whiteouts and opaque markers become deletions the union records itself."""

from __future__ import annotations

import io
import os
import tarfile

import aufs
from aufs.graphdriver import NaiveDiffDriver
from aufs.whiteout import WH_OPAQUE, WH_PREFIX


def _tar(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size = len(name)
                tf.addfile(info, io.BytesIO(name.encode()))
    return buf.getvalue()


def test_naive_apply_into_a_mounted_union(driver: aufs.Driver) -> None:
    driver.create("base")
    base = driver.layout.diff("base")
    os.makedirs(f"{base}/opq/old")
    for rel in ("gone", "kept", "opq/old/x"):
        with open(f"{base}/{rel}", "w") as f:
            f.write(rel)
    driver.create("L", "base")
    naive = NaiveDiffDriver(driver)
    data = _tar([f"{WH_PREFIX}gone", "opq/", f"opq/{WH_OPAQUE}", "opq/new", "added"])
    size = naive.apply_diff("L", "base", io.BytesIO(data))
    assert size == len("opq/new") + len("added")
    mnt = driver.get("L")
    try:
        assert sorted(os.listdir(mnt)) == ["added", "kept", "opq"]
        assert os.listdir(f"{mnt}/opq") == ["new"]
    finally:
        driver.put("L")
    assert not driver.mounted("L")
    assert os.path.exists(f"{base}/gone")  # the parent is untouched
