"""apply_diff with its file-writing process (aufs.archive.offload): the same layer as
without it, errors raised as without it, and the process never outlives the extraction.

The process starts only for big tar files, and this process keeps writing files itself
while the writer is behind; the ``offload_on`` fixture makes every regular file go
through it, and counts the processes started (a test that meant to use one and did not
would prove nothing).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import os
import select
import signal
import struct
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import aufs
from aufs.archive import ArchiveError, offload, unpack
from aufs.archive.apply import extract
from aufs.whiteout import OVERLAY, WH_OPAQUE, WH_PREFIX
from tests.engines.test_apply_diff import _populate
from tests.leaks import children, is_writer, writer_processes
from tests.safety.snapshot import snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the writer runs for root only")

T = 1_600_000_000


@pytest.fixture
def offload_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every regular file through the writer process; yields the pids started."""
    started: list[int] = []
    real_start = offload.Offload.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[offload.Offload], root_fd: int, tar_fd: int) -> offload.Offload | None:
        made: offload.Offload | None = real_start(cls, root_fd, tar_fd)
        if made is not None:
            started.append(made._proc.pid)
        return made

    monkeypatch.setattr(unpack, "OFFLOAD_BYTES", 0)
    monkeypatch.setattr(offload, "_BEHIND", 1 << 40)  # never share the files out
    monkeypatch.setattr(offload.Offload, "start", classmethod(start))
    yield started


def _file(tmp_path: Path, data: bytes, name: str = "layer.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pax_tar(entries: list[tuple[str, bytes | None, dict[str, str]]]) -> bytes:
    """Regular files (bytes) and directories (None, mode 0755), each with PAX headers."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, pax in entries:
            info = tarfile.TarInfo(name)
            info.pax_headers = pax
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _files_tar(files: dict[str, bytes]) -> bytes:
    return _pax_tar([(name, data, {}) for name, data in files.items()])


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: the writer runs out of space there."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _extract_new(directory: Path, tar: Path) -> None:
    """Extract ``tar`` into the empty ``directory`` (no store: no staging copy)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(tar, "rb") as f:
            extract(fd, f, OVERLAY, made={})
    finally:
        os.close(fd)


def _apply_file(driver: aufs.Driver, id: str, tar: Path) -> int:
    with open(tar, "rb") as f:
        return driver.apply_diff(id, "", f)


def _no_offload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpack, "OFFLOAD_BYTES", 1 << 62)


def test_same_layer_as_without_the_writer(driver: aufs.Driver, tmp_path: Path,
                                          offload_on: list[int]) -> None:
    driver.create("src")
    src = driver.layout.diff("src")
    _populate(src)
    for i in range(300):  # sizes across the pread / copy_file_range boundary
        with open(f"{src}/dir/f{i:03}", "wb") as f:
            f.write(os.urandom(i * 997 if i % 50 else 300_000 + i))
        os.chmod(f"{src}/dir/f{i:03}", (0o4755, 0o1777, 0o640, 0o2711)[i % 4])
        os.chown(f"{src}/dir/f{i:03}", i, 1000 + i)
        os.utime(f"{src}/dir/f{i:03}", (T + i, T + 7 * i))
    with driver.diff("src") as stream:
        tar = _file(tmp_path, stream.read())
    driver.create("dst")
    size = _apply_file(driver, "dst", tar)
    assert len(offload_on) == 1
    want = snapshot(src)
    got = snapshot(driver.layout.diff("dst"))
    want.pop(".")
    got.pop(".")
    assert got == want
    assert size == driver.diff_size("src") == driver.diff_size("dst")
    assert writer_processes() == []


def _tricky_tar() -> bytes:
    """Files, then entries that touch them again: the writer must be waited for."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, data: bytes | None = b"", *, kind: bytes = tarfile.REGTYPE,
                link: str = "", mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.type, info.linkname = T + 0.5, mode, kind, link
            if kind == tarfile.DIRTYPE:
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data or b"")
                tf.addfile(info, io.BytesIO(data or b""))

        add("d", kind=tarfile.DIRTYPE)
        for i in range(60):
            add(f"d/f{i}", b"%d" % i * 500)
        add(f"d/{WH_PREFIX}f5")                     # removes a file of the writer
        add("d/f6", b"second version")              # replaces one
        add("d/f7", kind=tarfile.SYMTYPE, link="/etc/passwd")  # a symlink where it was
        add("d/link", kind=tarfile.LNKTYPE, link="d/f8")       # a hard link to one
        add("d/f9", kind=tarfile.DIRTYPE)           # a directory where it was
        add("d/f9/inside", b"in")
        add("o", kind=tarfile.DIRTYPE)
        add("o/kept", b"kept")
        add(f"o/{WH_OPAQUE}")                       # opaque after its own file
        for i in range(60, 90):
            add(f"d/f{i}", b"late %d" % i)
    return buf.getvalue()


def test_entries_that_touch_the_writers_files_again(driver: aufs.Driver, tmp_path: Path,
                                                    offload_on: list[int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tar = _file(tmp_path, _tricky_tar())
    driver.create("with")
    size_with = _apply_file(driver, "with", tar)
    assert len(offload_on) == 1
    _no_offload(monkeypatch)
    driver.create("without")
    size_without = _apply_file(driver, "without", tar)
    assert len(offload_on) == 1
    got = snapshot(driver.layout.diff("with"))
    want = snapshot(driver.layout.diff("without"))
    for tree in (got, want):
        tree.pop(".")  # made when the layer was: no entry of the tar
        tree.pop(f"o/{WH_OPAQUE}", None)  # an AUFS marker is made with the time of the day
    assert got == want
    assert size_with == size_without == driver.diff_size("with")
    layer = driver.layout.diff("with")
    assert not os.path.isfile(f"{layer}/d/f5")  # gone (an overlay whiteout is a device)
    assert os.path.lexists(f"{layer}/d/{driver.whiteouts.whiteout_path_name('f5')}")
    assert Path(f"{layer}/d/f6").read_bytes() == b"second version"
    assert os.readlink(f"{layer}/d/f7") == "/etc/passwd"
    assert os.stat(f"{layer}/d/link").st_ino == os.stat(f"{layer}/d/f8").st_ino
    assert Path(f"{layer}/d/f9/inside").read_bytes() == b"in"
    assert Path(f"{layer}/o/kept").read_bytes() == b"kept"
    assert os.stat(f"{layer}/d/f80").st_mtime_ns == T * 10**9 + 500_000_000  # PAX time


def test_files_met_again_after_the_writer_made_them(driver: aufs.Driver, tmp_path: Path,
                                                  offload_on: list[int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The extractor remembers no file the writer is done with: a name met again goes to
    the writer, which replaces the file; the size stays exact (a replaced file with
    another link leaves it to a walk)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        def add(name: str, data: bytes, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mtime = T
            if link:
                info.type, info.linkname = tarfile.LNKTYPE, link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

        info = tarfile.TarInfo("d")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, T
        tf.addfile(info)
        for i in range(1500):  # more than offload forgets at once
            add(f"d/f{i:04}", b"%d" % i * 40)
        add("d/link", b"", link="d/f0001")
        add("d/f0000", b"again")           # replaced: its bytes leave the sum
        add("d/f0001", b"again, linked")   # its old inode stays as d/link
    tar = _file(tmp_path, buf.getvalue())
    sizes = []
    for layer in ("with", "without"):
        if layer == "without":
            _no_offload(monkeypatch)
        driver.create(layer)
        sizes.append(_apply_file(driver, layer, tar))
    assert len(offload_on) == 1
    assert sizes[0] == sizes[1] == driver.diff_size("with") == driver.diff_size("without")
    layer = driver.layout.diff("with")
    assert Path(f"{layer}/d/f0000").read_bytes() == b"again"
    assert Path(f"{layer}/d/f0001").read_bytes() == b"again, linked"
    assert Path(f"{layer}/d/link").read_bytes() == b"1" * 40
    got, want = snapshot(layer), snapshot(driver.layout.diff("without"))
    got.pop(".")  # made when the layer was: no entry of the tar
    want.pop(".")
    assert got == want


@pytest.mark.parametrize("writer", [True, False], ids=["writer", "here"])
def test_owners_in_setgid_directories(driver: aufs.Driver, tmp_path: Path,
                                      offload_on: list[int], monkeypatch: pytest.MonkeyPatch,
                                      writer: bool) -> None:
    """No fchown where a new file has its owner already — but a file in a setgid
    directory gets the directory's group, and a directory's entry may change both."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        def add(name: str, gid: int, mode: int = 0o644, uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, T
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = 3
                tf.addfile(info, io.BytesIO(b"abc"))

        add("s/", 1234, 0o2775)
        add("s/a", 0)
        add("s/b", 1234)
        add("s/deep/c", 0)  # an implicit directory inherits setgid and group
        add("p/", 0, 0o755)
        add("p/d", 0)
        add("p/e", 0, uid=5)
        add("p/", 1234, 0o2755)  # met again: setgid from here on
        add("p/f", 0)
        add("s/", 0, 0o755)  # and no longer
        add("s/g", 1234)
    if not writer:
        _no_offload(monkeypatch)
    driver.create("L")
    _apply_file(driver, "L", _file(tmp_path, buf.getvalue()))
    assert len(offload_on) == int(writer)
    layer = driver.layout.diff("L")
    owners = {name: (os.lstat(f"{layer}/{name}").st_uid, os.lstat(f"{layer}/{name}").st_gid)
              for name in ("s/a", "s/b", "s/deep/c", "p/d", "p/e", "p/f", "s/g")}
    assert owners == {"s/a": (0, 0), "s/b": (0, 1234), "s/deep/c": (0, 0), "p/d": (0, 0),
                      "p/e": (5, 0), "p/f": (0, 0), "s/g": (0, 1234)}


def test_a_path_below_a_file_of_the_writer_is_refused_alike(
        driver: aufs.Driver, tmp_path: Path, offload_on: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    tar = _file(tmp_path, _files_tar({"a": b"x", "a/b": b"x"}))
    driver.create("L")
    messages = []
    for forced in (True, False):
        if not forced:
            _no_offload(monkeypatch)
        with pytest.raises(ArchiveError) as refused:
            _apply_file(driver, "L", tar)
        messages.append(str(refused.value))
    assert len(offload_on) == 1
    assert messages[0] == messages[1]
    assert "'a' is not a directory" in messages[0]
    assert os.listdir(driver.layout.diff("L")) == []
    assert writer_processes() == []


def test_the_writers_error_is_raised_and_nothing_is_left(tmp_path: Path, small_fs: Path,
                                                         offload_on: list[int]) -> None:
    """ENOSPC in the writer: the same OSError the extractor would raise itself."""
    tar = _file(tmp_path, _files_tar({f"f{i}": os.urandom(100_000) for i in range(40)}))
    with pytest.raises(OSError) as failed:
        _extract_new(small_fs, tar)
    assert failed.value.errno == 28  # ENOSPC, with the name of the file that failed
    assert str(failed.value.filename).startswith("f")
    assert len(offload_on) == 1
    assert writer_processes() == []


def test_a_writer_that_dies_is_an_archive_error(driver: aufs.Driver, tmp_path: Path,
                                                offload_on: list[int],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_file = offload.Offload.file

    def file_then_die(self: offload.Offload, *args: object, **kw: object) -> None:
        real_file(self, *args, **kw)  # type: ignore[arg-type]
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGKILL)

    monkeypatch.setattr(offload.Offload, "file", file_then_die)
    tar = _file(tmp_path, _files_tar({f"f{i}": b"0123456789" for i in range(20)}))
    driver.create("L")
    with open(f"{driver.layout.diff('L')}/old", "w") as f:
        f.write("old")
    before = snapshot(driver.layout.diff("L"))
    with pytest.raises(ArchiveError, match="file-writing process died"):
        _apply_file(driver, "L", tar)
    assert snapshot(driver.layout.diff("L")) == before
    assert os.listdir(driver.layout.staging_dir) == []
    assert writer_processes() == []


_CHILD = """
import sys, time, aufs
from aufs.archive import unpack
unpack.OFFLOAD_BYTES = 0
from aufs.archive import offload
offload._BEHIND = 1 << 40
file = offload.Offload.file
announced = []
def slow_file(self, *args):  # 1 ms a file: the apply lasts seconds, whatever the machine
    time.sleep(0.001)
    file(self, *args)
    if not announced:  # the writer answered: it runs (SIGINT ignored, dies with us)
        announced.append(self.pid)
        self.barrier()
        sys.stdout.write(f"{self.pid}\\n")
        sys.stdout.flush()
offload.Offload.file = slow_file
d = aufs.init(sys.argv[1], ["aufs.engine=" + sys.argv[2]])
with open(sys.argv[3], "rb") as f:
    d.apply_diff("L", "", f)
"""
# A bound on waits for events that come in well under a second: only a hung process
# reaches it.
HUNG = 120.0


def _child_with_writer(root: str, engine: str, tar: Path
                       ) -> tuple[subprocess.Popen[bytes], int, int]:
    """A process applying ``tar`` to layer L, once its writer runs: the child, the
    writer's pid (the child says it, as soon as the writer has answered) and a pidfd of
    the writer."""
    src = os.path.dirname(os.path.dirname(aufs.__file__))  # the aufs under test
    child = subprocess.Popen([sys.executable, "-c", _CHILD, root, engine, str(tar)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": src})
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], HUNG)
    line = child.stdout.readline() if ready else b""
    if not line:
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the child never started its writer: {err.decode()[-400:]}")
    writer = int(line)
    assert writer in children(child.pid) and is_writer(writer)
    return child, writer, os.pidfd_open(writer)


def _ignores_sigint(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def _gone(pidfd: int) -> bool:
    """Wait for the process of ``pidfd`` to exit (its pidfd turns readable); close it."""
    try:
        ready, _, _ = select.select([pidfd], [], [], HUNG)
        return bool(ready)
    finally:
        os.close(pidfd)


def _big_tar(tmp_path: Path) -> Path:
    return _file(tmp_path, _files_tar({f"f{i:05}": bytes(30_000) for i in range(3000)}))


def test_kill_9_mid_apply_takes_the_writer_along(driver: aufs.Driver, engine: str,
                                                tmp_path: Path) -> None:
    root = driver.layout.root
    driver.create("L")
    child, _, writer = _child_with_writer(root, engine, _big_tar(tmp_path))
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert _gone(writer), "the writer outlived its parent"
    d2 = aufs.init(root, [f"aufs.engine={engine}"])
    try:
        assert os.listdir(d2.layout.diff("L")) == []
        assert os.listdir(d2.layout.staging_dir) == []
    finally:
        d2.cleanup()


def test_ctrl_c_mid_apply_stops_the_writer_and_undoes_the_apply(
        driver: aufs.Driver, engine: str, tmp_path: Path) -> None:
    """SIGINT reaches the whole foreground group: the writer ignores it, the parser's
    KeyboardInterrupt stops the writer, removes the staging tree and leaves the layer as
    it was — all before the process exits (no ``init`` needed, unlike ``kill -9``)."""
    root = driver.layout.root
    driver.create("L")
    child, writer, writer_fd = _child_with_writer(root, engine, _big_tar(tmp_path))
    try:
        assert _ignores_sigint(writer)
        signal.pidfd_send_signal(writer_fd, signal.SIGINT)  # as a terminal's ^C: to both
        ready, _, _ = select.select([writer_fd], [], [], 0.1)
        assert not ready and child.poll() is None, "the writer did not ignore SIGINT"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == -signal.SIGINT and b"KeyboardInterrupt" in err
    assert _gone(writer_fd)
    assert os.listdir(driver.layout.diff("L")) == []
    assert os.listdir(driver.layout.staging_dir) == []


def test_without_a_python_to_run_files_are_written_here(driver: aufs.Driver, tmp_path: Path,
                                                        offload_on: list[int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen application's executable would start the application, not the writer."""
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    tar = _file(tmp_path, _tricky_tar())
    driver.create("L")
    assert _apply_file(driver, "L", tar) == driver.diff_size("L") > 0
    assert offload_on == []
    assert Path(f"{driver.layout.diff('L')}/d/f6").read_bytes() == b"second version"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "..", "a/..", "a//x", "", "a/"])
def test_the_writer_never_steps_out(tmp_path: Path, path: str) -> None:
    """Names come cleaned from the extractor; the writer refuses any other all the same."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    tar = _file(tmp_path, b"data")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    tar_fd = os.open(tar, os.O_RDONLY)
    try:
        writer = offload.Offload.start(root_fd, tar_fd)
        assert writer is not None
        try:
            writer.file("entry", path, 0o644, None, 0, 0, 0, 0, 0, 4)
            with pytest.raises(ArchiveError, match=r"Errno 22"):  # EINVAL, refused
                writer.barrier()
        finally:
            writer.close()
    finally:
        os.close(root_fd)
        os.close(tar_fd)
    assert sorted(os.listdir(tmp_path)) == ["layer.tar", "root"]
    assert os.listdir(root) == ["a"] and os.listdir(root / "a") == []


_LOW_FDS_CHILD = """
import resource, sys, aufs
from aufs.archive import offload, unpack
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
unpack.OFFLOAD_BYTES = 0
offload._BEHIND = 1 << 40
started = []
real = offload.Offload.start.__func__
def start(cls, root_fd, tar_fd):
    made = real(cls, root_fd, tar_fd)
    if made is not None:
        started.append(made)
    return made
offload.Offload.start = classmethod(start)
d = aufs.init(sys.argv[1], ["aufs.engine=" + sys.argv[2]])
try:
    d.create("L")
    with open(sys.argv[3], "rb") as f:
        print(d.apply_diff("L", "", f), len(started))
finally:
    d.cleanup()
"""


def test_many_directories_under_a_low_fd_limit(engine: str, tmp_path: Path) -> None:
    """The writer keeps a bounded number of directories open."""
    tar = _file(tmp_path, _files_tar({f"d{i}/f": b"abc" for i in range(300)}))
    out = subprocess.run([sys.executable, "-c", _LOW_FDS_CHILD, str(tmp_path / "store"), engine,
                          str(tar)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["900", "1"]


def test_big_files_from_a_tar_on_another_filesystem(driver: aufs.Driver, tmpfs: Path,
                                                    offload_on: list[int]) -> None:
    """copy_file_range may refuse across filesystems: the writer then copies through a
    buffer, and the data is the same."""
    blobs = {f"big{i}": os.urandom(300_000 + i) for i in range(3)}
    tar = _file(tmpfs, _files_tar(blobs))
    driver.create("L")
    assert _apply_file(driver, "L", tar) == sum(len(b) for b in blobs.values())
    assert len(offload_on) == 1
    for name, data in blobs.items():
        assert Path(driver.layout.diff("L"), name).read_bytes() == data


def test_a_directory_whited_out_then_made_again_below(driver: aufs.Driver, tmp_path: Path,
                                                      offload_on: list[int]) -> None:
    """``.wh.d`` then ``d/x/y`` where the layer had the file ``d/x``: ``d/x`` is a new
    directory (the removal took the old tree, and its names, along)."""
    driver.create("L")
    _apply_file(driver, "L", _file(tmp_path, _pax_tar([("d/x", b"old", {})]), "one.tar"))
    _apply_file(driver, "L", _file(tmp_path, _pax_tar(
        [(f"{WH_PREFIX}d", b"", {}), ("d/x/y", b"new", {})]), "two.tar"))
    assert Path(driver.layout.diff("L"), "d/x/y").read_bytes() == b"new"
    assert len(offload_on) == 2  # the second apply too


def test_a_nul_byte_in_a_name_is_the_entrys_error(driver: aufs.Driver, tmp_path: Path,
                                                  offload_on: list[int]) -> None:
    tar = _file(tmp_path, _pax_tar([("ok", b"1", {}), ("x", b"2", {"path": "bad\x00name"})]))
    driver.create("L")
    with pytest.raises(ArchiveError, match="tar entry") as refused:
        _apply_file(driver, "L", tar)
    assert "died" not in str(refused.value)
    assert offload_on and os.listdir(driver.layout.diff("L")) == []


@pytest.mark.parametrize("forced", [True, False])
def test_an_owner_out_of_range_is_an_archive_error(driver: aufs.Driver, tmp_path: Path,
                                                   offload_on: list[int], forced: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not forced:
        _no_offload(monkeypatch)
    tar = _file(tmp_path, _pax_tar([("ok", b"1", {}), ("big", b"2", {"uid": str(1 << 40)})]))
    driver.create("L")
    with pytest.raises(ArchiveError, match="tar entry 'big'"):
        _apply_file(driver, "L", tar)
    assert os.listdir(driver.layout.diff("L")) == []


def test_a_tar_file_that_shrinks_under_the_writer(driver: aufs.Driver, tmp_path: Path,
                                                  offload_on: list[int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tar = _file(tmp_path, _pax_tar([("first", b"a" * 5000, {}), ("victim", b"v" * 50_000, {}),
                                    ("after", b"z", {})]))
    real_file = offload.Offload.file

    def file_then_truncate(self: offload.Offload, name: str, *args: object) -> None:
        real_file(self, name, *args)  # type: ignore[arg-type]
        if name == "victim":
            os.truncate(tar, args[-2])  # type: ignore[arg-type]  # its data is gone
    monkeypatch.setattr(offload.Offload, "file", file_then_truncate)
    driver.create("L")
    with pytest.raises(ArchiveError, match="tar entry 'victim': truncated tar stream"):
        _apply_file(driver, "L", tar)
    assert os.listdir(driver.layout.diff("L")) == []


def test_the_writers_earlier_error_wins_over_a_later_one(tmp_path: Path, small_fs: Path,
                                                         offload_on: list[int]) -> None:
    """ENOSPC met by the writer at an early entry, a breakout later: ENOSPC is raised, as
    it would be had one process done both in order."""
    files = {f"f{i}": os.urandom(100_000) for i in range(30)}
    tar = _file(tmp_path, _files_tar({**files, "../evil": b"x"}))
    with pytest.raises(OSError) as failed:
        _extract_new(small_fs, tar)
    assert failed.value.errno == 28
    assert len(offload_on) == 1
    assert writer_processes() == []


def test_no_writer_for_a_small_layer(driver: aufs.Driver, tmp_path: Path,
                                     offload_on: list[int],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's promise: a writer only for an uncompressed tar file with 32 MiB (or
    2,048 files) to go; a small one, a compressed one or a piped one is written in
    process."""
    monkeypatch.setattr(unpack, "OFFLOAD_BYTES", 32 << 20)  # the shipped thresholds
    monkeypatch.setattr(unpack, "OFFLOAD_FILES", 2048)
    data = _files_tar({f"f{i}": b"x" * 1000 for i in range(300)})
    driver.create("small")
    _apply_file(driver, "small", _file(tmp_path, data))
    monkeypatch.setattr(unpack, "OFFLOAD_BYTES", 0)  # big enough, but compressed
    driver.create("gz")
    _apply_file(driver, "gz", _file(tmp_path, gzip.compress(data), "layer.tar.gz"))
    driver.create("piped")  # big enough, uncompressed, but not a file: from a pipe
    with subprocess.Popen(["cat", str(_file(tmp_path, data))], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        driver.apply_diff("piped", "", cat.stdout)
    assert offload_on == []
    assert driver.diff_size("small") == driver.diff_size("gz") == 300_000
    assert driver.diff_size("piped") == 300_000


@pytest.mark.parametrize("behind", ["shipped", "every other file"])
def test_shipped_thresholds_start_after_2048_files_and_share_the_load(
        driver: aufs.Driver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        behind: str) -> None:
    """With the shipped settings (no fixture forcing the writer): a small tar of many
    files is written in this process up to ``OFFLOAD_FILES``, then by the writer and by
    this process whenever the writer is behind. The layer is the same as written without
    the writer. When the writer is behind depends on the machine; with ``behind`` made
    to say yes every other file, both sides surely write after the start."""
    order: list[str] = []
    real_write, real_hand_over = unpack.Unpacker._write, unpack.Unpacker._hand_over

    def write(self: unpack.Unpacker, *args: object) -> None:
        order.append("here")
        real_write(self, *args)  # type: ignore[arg-type]

    def hand_over(self: unpack.Unpacker, *args: object) -> None:
        order.append("writer")
        real_hand_over(self, *args)  # type: ignore[arg-type]

    if behind != "shipped":
        asked = itertools.count()
        monkeypatch.setattr(offload.Offload, "behind", lambda self: next(asked) % 2 == 1)
    monkeypatch.setattr(unpack.Unpacker, "_write", write)
    monkeypatch.setattr(unpack.Unpacker, "_hand_over", hand_over)
    files = {f"d{i % 7}/f{i:04}": b"%d\n" % i * (i % 300) for i in range(3000)}
    tar = _file(tmp_path, _files_tar(files))
    assert tar.stat().st_size < unpack.OFFLOAD_BYTES  # the file count starts it
    driver.create("shared")
    assert _apply_file(driver, "shared", tar) == sum(len(d) for d in files.values())
    assert order.index("writer") == unpack.OFFLOAD_FILES == 2048
    assert len(order) == 3000 and order.count("writer") > 0
    if behind != "shipped":
        # the first of the 952 starts the writer; behind() is asked of the other 951
        assert order[2048:].count("here") == 475 and order[2048:].count("writer") == 477
    _no_offload(monkeypatch)
    driver.create("alone")
    _apply_file(driver, "alone", tar)
    # the files (the directories, made implicitly, have the time of the apply)
    got, want = ({k: v for k, v in snapshot(driver.layout.diff(id)).items() if "/" in k}
                 for id in ("shared", "alone"))
    assert got == want and len(got) == 3000
    assert writer_processes() == []


def test_a_tar_that_starts_inside_the_file(driver: aufs.Driver, tmp_path: Path,
                                           offload_on: list[int]) -> None:
    """A stream positioned past other bytes of its file (a tar inside a bigger file):
    the writer reads each file's data where it lies in the file, not at its offset in
    the tar."""
    blobs = {f"f{i}": os.urandom(1000 * i + 7) for i in range(1, 40)}
    blobs["big"] = os.urandom(300_000)  # copy_file_range's path too
    prefix = os.urandom(12_345)  # not a multiple of the tar block
    path = _file(tmp_path, prefix + _files_tar(blobs) + b"trailing bytes")
    driver.create("L")
    with open(path, "rb") as f:
        f.seek(len(prefix))
        driver.apply_diff("L", "", f)
    assert len(offload_on) == 1
    for name, data in blobs.items():
        assert Path(driver.layout.diff("L"), name).read_bytes() == data


def _default_acl() -> str:
    """A default ACL granting uid 1234 (``user:1234:rwx``), as a PAX xattr value."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, 7, undefined), (0x02, 7, 1234), (0x04, 5, undefined),
               (0x10, 7, undefined), (0x20, 5, undefined)]
    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    return raw.decode("utf-8", "surrogateescape")  # tarfile writes it back as bytes


@pytest.mark.parametrize("directory", ["d", "."])
def test_a_directory_given_a_default_acl_after_its_files(driver: aufs.Driver, tmp_path: Path,
                                                         offload_on: list[int],
                                                         directory: str) -> None:
    """``d/`` (or the root), files in it, then ``d/`` again with a default ACL: the files
    existed before the ACL, so they do not inherit it — also when the writer makes them."""
    acl = {"SCHILY.xattr.system.posix_acl_default": _default_acl()}
    tar = _pax_tar([(directory, None, {}),
                    *((f"{directory}/f{i}", b"abc", {}) for i in range(50)),
                    (directory, None, acl)])
    driver.create("L")
    _apply_file(driver, "L", _file(tmp_path, tar))
    assert len(offload_on) == 1
    d = Path(driver.layout.diff("L"), directory)
    assert "system.posix_acl_default" in os.listxattr(d)  # the ACL is there
    inherited = [f for f in os.listdir(d) if "system.posix_acl_access" in os.listxattr(d / f)]
    assert inherited == []
