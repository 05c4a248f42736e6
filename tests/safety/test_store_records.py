"""The store's image records are read like its layer files: never through a symlink,
never waiting on a FIFO, never without a bound on their size."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

import aufs
from aufs.errors import DriverError, LayerInUseError, LayerMountedError
from aufs.store import images


@pytest.fixture
def store(overlay_driver: aufs.Driver) -> aufs.Driver:
    return overlay_driver


@pytest.mark.parametrize("swap", ["fifo", "symlink to /dev/zero", "too large"])
def test_a_damaged_image_record_is_no_record(store: aufs.Driver, swap: str) -> None:
    store.create("l")
    path = store.layout.image("l")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "too large":
        with open(path, "wb") as f:
            f.truncate(images.RECORD_LIMIT + 1)
    else:
        os.symlink("/dev/zero", path)
    assert images.read(store.layout, "l") is None  # returns at once, bounded


def test_apply_refuses_a_base_layer_held_by_get(store: aufs.Driver) -> None:
    """get() of a layer without parents hands out diff/<id> itself: an apply's swap would
    pull the tree away from under its holder."""
    store.create("b")
    root = store.get("b")
    try:
        with pytest.raises(LayerMountedError, match="in use"):
            store.apply_diff("b", "", io.BytesIO(b"\0" * 1024))
        assert os.listdir(root) == []
    finally:
        store.put("b")
    store.apply_diff("b", "", io.BytesIO(b"\0" * 1024))  # released: fine again


# -- the store's other own files: the child index, the lock, import markers ---------------

class _FifoGuard:
    """While the code under test runs: if it still runs after ``seconds``, open the FIFO
    ``path`` for writing and for reading (again and again: each open ends one blocked
    open or read), so that the test fails instead of hanging."""

    def __init__(self, path: str, seconds: float = 5.0) -> None:
        import threading

        self.path = path
        self.fired = False
        self._seconds = seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        wait = self._seconds
        while not self._done.wait(wait):
            self.fired = True
            wait = 0.05
            for mode in (os.O_WRONLY, os.O_RDONLY):  # ends a blocked reader, or writer
                try:
                    fd = os.open(self.path, mode | os.O_NONBLOCK)
                except OSError:
                    continue
                os.close(fd)

    def __enter__(self) -> _FifoGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        assert not self.fired, f"hung on the FIFO {self.path}"


def test_a_child_index_entry_that_is_a_symlink_is_not_followed(
        store: aufs.Driver, tmp_path: Path) -> None:
    """``.aufs/children/<parent>`` planted as a symlink to a host directory: a create
    makes nothing there, a remove unlinks nothing there, and the parent stays protected."""
    host = os.path.join(str(tmp_path), "host")
    os.mkdir(host)
    with open(os.path.join(host, "c"), "w") as f:  # what a remove of "c" must not unlink
        f.write("host file\n")
    store.create("p")
    store.create("b", "p")  # the index exists and is fresh
    index = os.path.join(store.layout.private_dir, "children")
    entry = os.path.join(index, "p")
    for name in os.listdir(entry):
        os.unlink(os.path.join(entry, name))
    os.rmdir(entry)
    os.symlink(host, entry)
    with pytest.raises(LayerInUseError):  # b still protects p (the index is damaged)
        store.remove("p")
    store.create("c", "p")
    assert sorted(os.listdir(host)) == ["c"]
    assert not os.path.islink(entry) and sorted(os.listdir(entry)) == ["c"]
    os.unlink(entry + "/c")
    os.rmdir(entry)
    os.symlink(host, entry)
    store.remove("c")
    with open(os.path.join(host, "c")) as f:
        assert f.read() == "host file\n"
    assert sorted(os.listdir(host)) == ["c"]


def test_a_child_index_stamp_that_is_a_fifo_does_not_hang(store: aufs.Driver) -> None:
    store.create("p")
    store.create("b", "p")
    stamp = os.path.join(store.layout.private_dir, "children", ".seen")
    os.unlink(stamp)
    os.mkfifo(stamp)
    with _FifoGuard(stamp):
        with pytest.raises(LayerInUseError):  # answered by reading layers/
            store.remove("p")
        store.remove("b")
        store.remove("p")
    assert not store.exists("p")


@pytest.mark.parametrize("shape", ["symlink", "fifo", "device"])
def test_a_lock_file_that_is_no_regular_file_is_refused(
        store: aufs.Driver, tmp_path: Path, shape: str) -> None:
    """``.aufs/lock`` is opened read-write at every call: a symlink there would have it
    made outside the store, a device would be opened."""
    import stat

    from aufs.errors import StoreCorruptError

    lock = store.layout.lock_file
    os.unlink(lock)
    target = os.path.join(str(tmp_path), "made-outside")
    if shape == "symlink":
        os.symlink(target, lock)
    elif shape == "fifo":
        os.mkfifo(lock)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(lock, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    with _FifoGuard(lock), pytest.raises(StoreCorruptError, match=r"/lock: is a "):
        store.create("x")
    assert not os.path.lexists(target)
    os.unlink(lock)
    store.create("x")  # removed, the store works again
    assert store.exists("x")


def test_an_import_marker_that_is_a_fifo_reads_as_unreadable(store: aufs.Driver) -> None:
    from aufs.store import incomplete

    os.makedirs(store.layout.incomplete_dir, exist_ok=True)
    marker = store.layout.incomplete("l")
    os.mkfifo(marker)
    with _FifoGuard(marker):
        assert incomplete.owner(store.layout, "l") == 0
    os.unlink(marker)
    os.symlink("/proc/self/stat", marker)  # a pid-looking file elsewhere: not followed
    assert incomplete.owner(store.layout, "l") == 0


@pytest.mark.parametrize("swap", ["fifo", "symlink to /dev/zero", "not an id"])
def test_a_damaged_names_file_is_no_names(store: aufs.Driver, swap: str) -> None:
    """``.aufs/names.json``: read without following a symlink (``/dev/zero`` would be
    read without end) or waiting on a FIFO; a name of something that is no layer id is
    dropped (it would become a path)."""
    from aufs.image import names

    path = store.layout.names_file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if swap == "fifo":
        os.mkfifo(path)
    elif swap == "not an id":
        with open(path, "w") as f:
            f.write('{"ok": "l", "bad": "../../etc"}\n')
    else:
        os.symlink("/dev/zero", path)
    with _FifoGuard(path):
        assert names.read(store.layout) == ({"ok": "l"} if swap == "not an id" else {})


# -- write_atomic's temporary file ---------------------------------------------------------

@pytest.mark.parametrize("planted", ["fifo", "hard link"])
def test_a_file_planted_at_a_temporary_name_is_not_written_into(
        store: aufs.Driver, planted: str) -> None:
    """``layers/<id>~<pid>`` planted before a create: a FIFO there made the write of the
    layer file wait for a reader; a hard link to another file had that file truncated and
    the chain written into it (here ``layers/p``; elsewhere on the store's filesystem, a
    host file). The temporary file is a new inode."""
    store.create("p")
    store.create("q", "p")
    tmp = f"{store.layout.layers('x')}~{os.getpid()}"
    if planted == "fifo":
        os.mkfifo(tmp)
    else:
        os.link(store.layout.layers("q"), tmp)
    with _FifoGuard(tmp):
        store.create("x", "q")
    assert store.parents("x") == ["q", "p"]
    assert store.parents("q") == ["p"]
    assert not os.path.lexists(tmp)


def test_convert_does_not_wait_on_a_fifo_at_the_opaque_marker(store: aufs.Driver) -> None:
    """An overlay-format layer's opaque directory holding a FIFO named ``.wh..wh..opq``
    (a container may make one): converting to AUFS whiteouts replaced the marker by
    opening it for writing, which waited for a reader."""
    from aufs.convert import convert
    from aufs.whiteout import WH_OPAQUE

    store.create("a")
    d = os.path.join(store.layout.diff("a"), "d")
    os.mkdir(d)
    os.setxattr(d, "trusted.overlay.opaque", b"y")
    marker = os.path.join(d, WH_OPAQUE)
    os.mkfifo(marker)
    with _FifoGuard(marker):
        convert(store.layout.root, "aufs")
    assert os.path.isfile(marker) and not os.path.islink(marker)


def test_convert_does_not_wait_on_a_fifo_as_a_time_file(store: aufs.Driver) -> None:
    """``.aufs/convert/<id>.json`` (directory times saved by an interrupted conversion)
    planted as a FIFO: convert waited on it for ever."""
    from aufs.convert import convert

    store.create("a")
    times = store.layout.convert_manifest("a")
    os.makedirs(os.path.dirname(times))
    os.mkfifo(times)
    with _FifoGuard(times), pytest.raises(DriverError, match=r"convert/a\.json: "):
        convert(store.layout.root, "aufs")


@pytest.mark.parametrize("body", [b"[1]\n", b'{"d": 1}\n', b'{"../..": [0, 0]}\n',
                                  b'{"/etc": [0, 0]}\n'])
def test_a_damaged_time_file_is_one_line(tmp_path: Path, body: bytes) -> None:
    """A time file that is no object of relative paths to two numbers: one line naming
    it (a list or a number had convert end in a traceback), and no path climbing out of
    the layer is touched."""
    from tests.cli.kit import Aufs

    if os.geteuid() != 0:
        pytest.skip("needs root")
    cli = Aufs(tmp_path / "store")
    try:
        cli.ok("create", "a")
        times = cli.root / ".aufs" / "convert" / "a.json"
        times.parent.mkdir()
        times.write_bytes(body)
        line = cli.fails(1, "convert", "--to", "aufs")
        assert "convert/a.json: " in line
    finally:
        cli.run("cleanup")
