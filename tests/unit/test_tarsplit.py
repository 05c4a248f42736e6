"""Byte-exact layer tars (aufs.archive.tarsplit): apply_diff records the tar, the record
rebuilds the same bytes from the layer, and any change to the layer makes it unusable."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import aufs
from aufs.archive import tarsplit

MTIME = 1_500_000_000


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **kw: object
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _tar(fmt: int, *, go_end: bool = False) -> bytes:
    """One of everything, in ``fmt``; tarfile pads the end to a 10 KiB record, Go's
    archive/tar (``go_end``) writes just the two zero blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        tar.addfile(_info("etc", tarfile.DIRTYPE))
        tar.addfile(_info("etc/empty"))
        data = b"x" * 5000 + b"end"
        tar.addfile(_info("etc/file", size=len(data)), io.BytesIO(data))
        long = "d" * 80 + "/" + "n" * (90 if fmt == tarfile.USTAR_FORMAT else 120)
        tar.addfile(_info("d" * 80, tarfile.DIRTYPE))
        tar.addfile(_info(long, size=3), io.BytesIO(b"abc"))
        tar.addfile(_info("etc/hard", tarfile.LNKTYPE, linkname="etc/file"))
        target = "/" + "t" * (90 if fmt == tarfile.USTAR_FORMAT else 150)
        tar.addfile(_info("etc/sym", tarfile.SYMTYPE, linkname=target))
        tar.addfile(_info("etc/.wh.gone"))
        tar.addfile(_info("opq", tarfile.DIRTYPE))
        tar.addfile(_info("opq/.wh..wh..opq"))
        big = os.urandom(300_000)
        tar.addfile(_info("big", size=len(big), uid=1000, gid=1000, uname="u", gname="g"),
                    io.BytesIO(big))
        if fmt == tarfile.PAX_FORMAT:
            tar.addfile(_info("xattr", size=2, pax_headers={"SCHILY.xattr.user.k": "v"}),
                        io.BytesIO(b"hi"))
        end = tar.offset
    return buf.getvalue()[:end] + bytes(1024) if go_end else buf.getvalue()


def _gnu_tar(tmp: Path) -> bytes:
    src = tmp / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_bytes(b"gnu\n" * 1000)
    os.symlink("b/f", src / "a" / "l")
    os.link(src / "a" / "b" / "f", src / "a" / "h")
    p = subprocess.run(["tar", "-C", str(src), "--numeric-owner", "-cf", "-", "."],
                       capture_output=True, check=True)
    return p.stdout


@pytest.fixture
def store(overlay_driver: aufs.Driver) -> aufs.Driver:
    return overlay_driver


def _apply(d: aufs.Driver, layer_id: str, data: bytes, parent: str = "") -> None:
    d.create(layer_id, parent)
    d.apply_diff(layer_id, "", io.BytesIO(data))


def _rebuilt(d: aufs.Driver, layer_id: str) -> tuple[bytes, str]:
    with tarsplit.open_rebuilt(d.layout.tar_split(layer_id), d.layout.diff(layer_id)) as r:
        out = []
        while chunk := r.read(7000):
            out.append(chunk)
        return b"".join(out), r.diff_id


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", ["pax", "gnu", "ustar, Go's end", "gnu tar", "gzip",
                                  "trailing bytes"])
def test_the_same_bytes_come_back(store: aufs.Driver, tmp_path: Path, kind: str) -> None:
    tar = {"pax": lambda: _tar(tarfile.PAX_FORMAT),
           "gnu": lambda: _tar(tarfile.GNU_FORMAT),
           "ustar, Go's end": lambda: _tar(tarfile.USTAR_FORMAT, go_end=True),
           "gnu tar": lambda: _gnu_tar(tmp_path),
           "gzip": lambda: _tar(tarfile.PAX_FORMAT),
           "trailing bytes": lambda: _tar(tarfile.PAX_FORMAT) + b"junk after the end"}[kind]()
    source = gzip.compress(tar) if kind == "gzip" else tar
    _apply(store, "l", source)
    assert _rebuilt(store, "l") == (tar, _sha(tar))


def test_a_tar_file_with_content_left_unread(store: aufs.Driver, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """From a tar file, big contents are copied without passing through the reader
    (copy_file_range; past 32 MiB by a writer process): still recorded, still hashed."""
    skipped: list[int] = []
    real = tarsplit.Recorder._skipped

    def counting(self: tarsplit.Recorder, offset: int, n: int) -> None:
        skipped.append(n)
        real(self, offset, n)

    monkeypatch.setattr(tarsplit.Recorder, "_skipped", counting)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(3):
            data = os.urandom(1 << 20) * 12
            t.addfile(_info(f"f{i}", size=len(data)), io.BytesIO(data))
    path = tmp_path / "layer.tar"
    path.write_bytes(buf.getvalue())
    store.create("l")
    with open(path, "rb") as f:
        store.apply_diff("l", "", f)
    assert _rebuilt(store, "l") == (buf.getvalue(), _sha(buf.getvalue()))
    assert sum(skipped) > 30 << 20


def _write_same_size(p: Path) -> None:
    p.write_bytes(p.read_bytes().upper())


CHANGES: dict[str, Callable[[Path], object]] = {
    "same-size write": lambda root: _write_same_size(root / "etc" / "file"),
    "chmod": lambda root: os.chmod(root / "etc" / "empty", 0o600),
    "new file deep": lambda root: (root / ("d" * 80) / "new").write_bytes(b""),
    "removed": lambda root: os.unlink(root / "big"),
    "xattr on a dir": lambda root: os.setxattr(root / "etc", "user.k", b"v"),
    "mtime only": lambda root: os.utime(root / "etc" / "sym", ns=(1, 1), follow_symlinks=False),
    "root mode": lambda root: os.chmod(root, 0o700),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_layer_is_not_rebuilt(store: aufs.Driver, change: str) -> None:
    _apply(store, "l", _tar(tarfile.PAX_FORMAT))
    CHANGES[change](Path(store.layout.diff("l")))
    with pytest.raises(tarsplit.Unusable, match="changed"):
        _rebuilt(store, "l")


def test_a_change_through_the_union(store: aufs.Driver) -> None:
    _apply(store, "base", _tar(tarfile.GNU_FORMAT))
    _apply(store, "top", _tar(tarfile.PAX_FORMAT), parent="base")
    mnt = Path(store.get("top"))
    try:
        (mnt / "etc" / "file").unlink()  # a whiteout in diff/top
    finally:
        store.put("top")
    with pytest.raises(tarsplit.Unusable, match="changed"):
        _rebuilt(store, "top")
    _rebuilt(store, "base")  # the union's lower layer is as it was


def test_what_drops_or_skips_the_record(store: aufs.Driver) -> None:
    tar = _tar(tarfile.PAX_FORMAT)
    _apply(store, "l", tar)
    store.apply_diff("l", "", io.BytesIO(_tar(tarfile.GNU_FORMAT)))  # onto content
    assert not os.path.exists(store.layout.tar_split("l"))
    store.remove("l")
    _apply(store, "l", tar)
    assert os.path.exists(store.layout.tar_split("l"))
    store.remove("l")  # the record goes with the layer
    assert not os.path.exists(store.layout.tar_split("l"))
    assert os.listdir(store.layout.staging_dir) == []


def test_a_failed_apply_records_nothing(store: aufs.Driver) -> None:
    store.create("l")
    with pytest.raises(aufs.archive.ArchiveError):
        store.apply_diff("l", "", io.BytesIO(_tar(tarfile.PAX_FORMAT)[:2000]))
    assert not os.path.exists(store.layout.tar_split("l"))
    assert os.listdir(store.layout.staging_dir) == []


def test_a_file_gone_after_the_fingerprint(store: aufs.Driver, tmp_path: Path) -> None:
    """A record whose files are not there (a copied store: other inodes) is unusable,
    and a reader of one that breaks half-way says so."""
    _apply(store, "l", _tar(tarfile.PAX_FORMAT))
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", store.layout.diff("l"), str(copy)], check=True)
    with pytest.raises(tarsplit.Unusable, match="changed"), \
            tarsplit.open_rebuilt(store.layout.tar_split("l"), str(copy)):
        pass
    with tarsplit.open_rebuilt(store.layout.tar_split("l"), store.layout.diff("l")) as r:
        r.read(100)
        os.truncate(Path(store.layout.diff("l")) / "big", 10)
        with pytest.raises(tarsplit.Unusable, match="no longer"):
            while r.read(1 << 16):
                pass


@pytest.mark.parametrize("swap", ["fifo", "symlink", "device"])
def test_a_record_that_is_no_regular_file_is_unusable(store: aufs.Driver, tmp_path: Path,
                                                      swap: str) -> None:
    """The record is the store's own file, so not trusted: a FIFO put in its place must
    not hang the export, a symlink must not be followed."""
    _apply(store, "l", _tar(tarfile.PAX_FORMAT))
    path = store.layout.tar_split("l")
    outside = tmp_path / "outside"
    shutil.copyfile(path, outside)  # the store root is a bind mount: no rename out
    os.unlink(path)
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: never opened
    else:
        os.symlink(outside, path)  # a valid record, but reached through a link
    with pytest.raises(tarsplit.Unusable, match=r"^the record is not a regular file$"):
        _rebuilt(store, "l")


def test_a_directory_swapped_for_a_symlink_while_rebuilding(store: aufs.Driver,
                                                              tmp_path: Path) -> None:
    """The directory of the file read last stays open for the next one of it; one reached
    afterwards is opened anew, never through a symlink put in its place meanwhile (a
    copy of it outside, same names and sizes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("a", "b"):
            tar.addfile(_info(d, tarfile.DIRTYPE))
            for n in ("1", "2"):
                tar.addfile(_info(f"{d}/{n}", size=4), io.BytesIO(b"%s/%s\n" % (
                    d.encode(), n.encode())))
    data = buf.getvalue()
    _apply(store, "l", data)
    assert _rebuilt(store, "l") == (data, _sha(data))
    layer = Path(store.layout.diff("l"))
    outside = tmp_path / "outside"
    shutil.copytree(layer / "b", outside)
    with tarsplit.open_rebuilt(store.layout.tar_split("l"), str(layer)) as r:
        got = b""
        while b"a/2\n" not in got:
            got += r.read(1 << 16)
        shutil.rmtree(layer / "b")
        os.symlink(outside, layer / "b")
        with pytest.raises(tarsplit.Unusable, match="symlink"):
            while r.read(1 << 16):
                pass
