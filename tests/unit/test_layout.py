"""The store on disk, without mounting: every path, the id rules, the layers file format."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aufs.errors import DriverError, StoreCorruptError
from aufs.graphdriver import InvalidLayerIDError
from aufs.store import chain, layers, meta, recover, refs
from aufs.store.layout import MAX_ID_LEN, REMOVING_SUFFIX, Layout, is_valid_id, validate_id

# -- ids (API.md: 1 to 128 of [A-Za-z0-9_.-], not "." or "..", not ending in -removing) -----

DOCKER_ID = "f" * 64
VALID = [
    "1", "a", "A", "z" * 128, "A-b_c.d", ".x", "..x", "x.", "...", "-", "_", "-init",
    DOCKER_ID, f"{DOCKER_ID}-init", "x-removingx", "x-Removing", "removing", "-removin",
]
INVALID = [
    "", ".", "..", "a" * 129, "a/b", "/a", "a/", "a b", " a", "a\n", "\n", "a\t", "a\0b",
    "x-removing", f"{DOCKER_ID}-removing", "-removing", "é", "a:b", "a,b", "a~1", "a*",
    "a\\b", "$x", "a;b", "a=b", "a+b", "a@b",
]


@pytest.mark.parametrize("layer_id", VALID)
def test_valid_ids(layer_id: str) -> None:
    assert validate_id(layer_id) == layer_id
    assert is_valid_id(layer_id)


@pytest.mark.parametrize("layer_id", [*INVALID, None, 1, b"abc", ["a"]])
def test_invalid_ids(layer_id: object) -> None:
    with pytest.raises(InvalidLayerIDError, match="invalid layer id"):
        validate_id(layer_id)
    assert not is_valid_id(layer_id)


def test_invalid_id_error_is_a_value_error() -> None:
    assert issubclass(InvalidLayerIDError, ValueError)


def test_removing_suffix() -> None:
    assert REMOVING_SUFFIX == "-removing"


# -- paths --------------------------------------------------------------------------------------


def test_every_path_of_a_store() -> None:
    lay = Layout.at("/var/lib/aufs")
    assert (lay.layers_dir, lay.diff_dir, lay.mnt_dir) == (
        "/var/lib/aufs/layers", "/var/lib/aufs/diff", "/var/lib/aufs/mnt")
    assert lay.layers("1") == "/var/lib/aufs/layers/1"
    assert lay.diff("1") == "/var/lib/aufs/diff/1"
    assert lay.mnt("1") == "/var/lib/aufs/mnt/1"
    assert lay.removing(lay.diff("1")) == "/var/lib/aufs/diff/1-removing"
    assert lay.private_dir == "/var/lib/aufs/.aufs"
    assert lay.meta_file == "/var/lib/aufs/.aufs/store.json"
    assert lay.lock_file == "/var/lib/aufs/.aufs/lock"
    assert (lay.refs_dir, lay.refs("1")) == ("/var/lib/aufs/.aufs/refs",
                                             "/var/lib/aufs/.aufs/refs/1")
    assert (lay.work_dir, lay.work("1")) == ("/var/lib/aufs/.aufs/work",
                                             "/var/lib/aufs/.aufs/work/1")
    assert (lay.links_dir, lay.link("ab12cd")) == ("/var/lib/aufs/.aufs/l",
                                                   "/var/lib/aufs/.aufs/l/ab12cd")
    assert (lay.staging_dir, lay.staging("x-1")) == ("/var/lib/aufs/.aufs/staging",
                                                     "/var/lib/aufs/.aufs/staging/x-1")
    assert lay.top_dirs() == (lay.mnt_dir, lay.diff_dir, lay.layers_dir)
    assert set(lay.private_dirs()) == {lay.private_dir, lay.refs_dir, lay.work_dir,
                                       lay.links_dir, lay.staging_dir}


def test_layout_root_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Layout.at("store").root == str(tmp_path / "store")
    assert Layout.at(Path("/a/b/")).root == "/a/b"


def test_private_dirs_stay_out_of_dockers_three() -> None:
    lay = Layout.at("/s")
    for private in lay.private_dirs():
        assert not any(private.startswith(top + "/") for top in lay.top_dirs())


# -- layers/<id>: Docker's format, byte for byte --------------------------------------------


@pytest.mark.parametrize(
    ("chain", "data"),
    [([], b""), (["p"], b"p\n"), (["p", "gp"], b"p\ngp\n"),
     ([DOCKER_ID, "e" * 64], f"{DOCKER_ID}\n{'e' * 64}\n".encode())],
)
def test_layers_file_format(chain: list[str], data: bytes) -> None:
    assert layers.format_chain(chain) == data
    assert layers.parse_chain(data) == chain


def test_layers_file_parse_is_lenient_like_docker() -> None:
    assert layers.parse_chain(b"p\r\ngp") == ["p", "gp"]  # no trailing newline, CRLF
    assert layers.parse_chain(b"\n\np\n\n") == ["p"]


def test_a_chain_line_longer_than_any_id_is_refused_before_it_is_remembered() -> None:
    """Valid ids are remembered (a deep chain is read at every get and put); a line of a
    damaged file longer than any id is refused without entering that memory."""
    chain._cached_valid_id.cache_clear()
    huge = "a" * (512 << 10)
    with pytest.raises(StoreCorruptError, match="line 2: invalid layer id") as info:
        chain.parse("layers/x", f"p\n{huge}\n".encode(), "x")
    # nor printed whole (the message goes out for every layer standing on the file)
    assert str(info.value) == (f"layers/x line 2: invalid layer id {'a' * MAX_ID_LEN!r}... "
                               f"({512 << 10} characters)")
    assert chain._cached_valid_id.cache_info().currsize == 1  # "p" only
    longest = "b" * MAX_ID_LEN
    assert chain.parse("layers/x", f"{longest}\n".encode(), "x") == [longest]
    with pytest.raises(StoreCorruptError):
        chain.parse("layers/x", f"{longest}b\n".encode(), "x")


def test_a_chain_parsed_once_is_remembered_for_its_bytes_and_layer_only() -> None:
    """A get reads the same chain files every time: their parse is remembered, by the
    file's bytes and the layer it belongs to, never by its path, and never an error."""
    chain._PARSED.clear()
    data = b"p\ngp\n"
    first = chain.parse("layers/x", data, "x")
    assert first == ["p", "gp"] and len(chain._PARSED) == 1
    first.append("changed by a caller")  # a copy: the memory is not the caller's list
    assert chain.parse("elsewhere/x", data, "x") == ["p", "gp"]
    assert len(chain._PARSED) == 1
    # the same bytes for another layer: checked anew (here a cycle through the layer itself)
    with pytest.raises(StoreCorruptError, match="layers/p line 1: p is the layer itself"):
        chain.parse("layers/p", data, "p")
    with pytest.raises(StoreCorruptError):  # errors are not remembered, nor skipped
        chain.parse("layers/p", data, "p")
    assert len(chain._PARSED) == 1
    # a file larger than Docker's deepest chain is parsed, not kept
    deep = "".join(f"{n:064x}\n" for n in range(1, 300)).encode()
    assert len(chain.parse("layers/y", deep, "y")) == 299
    assert len(chain._PARSED) == 1
    # the memory stays bounded
    for n in range(chain._PARSED_MAX + 5):
        chain.parse("layers/z", f"p{n}\n".encode(), "z")
    assert len(chain._PARSED) <= chain._PARSED_MAX


def test_layers_file_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "layers" / "c"
    path.parent.mkdir()
    layers.write_chain(str(path), ["b", "a"])
    assert path.read_bytes() == b"b\na\n"
    assert layers.read_chain(str(path)) == ["b", "a"]
    assert os.listdir(path.parent) == ["c"]  # no temp file left
    layers.write_chain(str(path), [])
    assert path.read_bytes() == b""
    with pytest.raises(FileNotFoundError):
        layers.read_chain(str(tmp_path / "layers" / "nope"))


def test_list_ids_skips_temp_files_and_removals(tmp_path: Path) -> None:
    for name in ("b", "a", "c-removing", f"d~{os.getpid()}"):
        (tmp_path / name).touch()
    (tmp_path / "subdir").mkdir()
    assert layers.list_ids(str(tmp_path)) == ["a", "b"]
    assert layers.list_ids(str(tmp_path / "missing")) == []


def test_recovery_removes_a_removal_marker_last_and_once(tmp_path: Path) -> None:
    """``layers/<id>-removing`` is the record of a removal under way: the layer's dirs go
    first, the marker after them (killed in between, the next init finishes the job), each
    once; a marker that names no layer is reported once and left."""
    lay = Layout.at(tmp_path)
    for top in ("layers", "diff", "mnt"):
        (tmp_path / top).mkdir()
    (tmp_path / "layers" / "gone-removing").touch()
    (tmp_path / "layers" / "..-removing").touch()
    (tmp_path / "diff" / "gone").mkdir()
    (tmp_path / "diff" / "gone" / "f").write_text("data")
    (tmp_path / "mnt" / "gone").mkdir()
    done = recover.finish(lay)
    assert done.removed == [lay.mnt("gone"), lay.diff("gone"),
                            lay.layers("gone") + REMOVING_SUFFIX]
    assert done.problems == [f"{lay.layers_dir}/..-removing: names no layer (invalid id): "
                             "left alone"]
    assert sorted(os.listdir(lay.layers_dir)) == ["..-removing"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_recovery_keeps_the_marker_while_a_dir_of_the_layer_cannot_go(tmp_path: Path) -> None:
    """A leftover that cannot be removed (here: a mount inside it) keeps the removal
    marker, so that the next init tries again, instead of leaving an orphan directory
    that no marker names."""
    from aufs._sys import libc

    lay = Layout.at(tmp_path)
    for top in ("layers", "diff", "mnt"):
        (tmp_path / top).mkdir()
    (tmp_path / "layers" / "gone-removing").touch()
    busy = tmp_path / "diff" / "gone" / "m"
    busy.mkdir(parents=True)
    libc.mount("tmpfs", str(busy), "tmpfs", 0, None)
    try:
        done = recover.finish(lay)
        assert len(done.problems) == 1 and done.problems[0].startswith(
            f"{lay.diff('gone')}: cannot remove a leftover")
        assert os.listdir(lay.layers_dir) == ["gone-removing"]
    finally:
        libc.umount2(str(busy), 0)
    done = recover.finish(lay)
    assert done.problems == []
    assert done.removed == [lay.diff("gone"), lay.layers("gone") + REMOVING_SUFFIX]
    assert os.listdir(lay.layers_dir) == [] and os.listdir(lay.diff_dir) == []


# -- refs and metadata ---------------------------------------------------------------------------


def test_refcount_file(tmp_path: Path) -> None:
    path = str(tmp_path / "r")
    assert refs.read(path) == 0
    refs.write(path, 3)
    assert refs.read(path) == 3 and Path(path).read_bytes() == b"3\n"
    refs.write(path, 12)
    refs.write(path, 1)
    assert Path(path).read_bytes() == b"1 \n"  # padded: one pwrite, no ftruncate
    refs.write(path, 0)
    assert refs.read(path) == 0
    Path(path).write_bytes(b"garbage")
    assert refs.read(path) == 0  # unreadable counts are void: the mount table decides
    refs.clear(path)
    assert not os.path.exists(path)


def test_store_metadata_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "store.json")
    assert meta.read(path) is None  # no file: a Docker aufs store
    m = meta.StoreMeta(whiteouts="overlay", engine="overlay")
    meta.write(path, m)
    assert meta.read(path) == m
    Path(path).write_text('{"whiteouts": "zfs"}')
    with pytest.raises(ValueError, match="whiteout"):
        meta.read(path)
    Path(path).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        meta.read(path)


def test_store_metadata_is_read_as_the_stores_own_file(tmp_path: Path) -> None:
    """store.json is never followed, waited on (a FIFO) or read without end (a device),
    and a version that is no integer is refused as unreadable (it raised TypeError)."""
    real = tmp_path / "real.json"
    real.write_text('{"whiteouts": "overlay", "engine": "overlay", "version": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path in (link, fifo):
        with pytest.raises(ValueError, match="unreadable store metadata"):
            meta.read(str(path))
    for version in ("[1]", "1e400", "true", '"1"'):
        real.write_text(f'{{"whiteouts": "overlay", "version": {version}}}')
        with pytest.raises(ValueError, match="store metadata of version"):
            meta.read(str(real))
    if os.geteuid() == 0:  # /dev/zero would be read until memory ran out
        device = tmp_path / "zero.json"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        with pytest.raises(ValueError, match="is a device"):
            meta.read(str(device))


def test_conversion_journal_appends_a_line_a_layer(tmp_path: Path) -> None:
    """The journal grows by one line a layer done (not the whole list again each time),
    and reads back in order; the torn last line of a crash mid-append is left out."""
    path = str(tmp_path / "convert.json")
    assert meta.read_journal(path) is None
    meta.write_journal(path, meta.Journal(target="overlay", source="aufs"))
    start = os.path.getsize(path)
    ids = [f"{n:064x}" for n in range(50)]
    for i in ids:
        meta.journal_done(path, i)
    assert os.path.getsize(path) == start + 65 * len(ids)
    assert meta.read_journal(path) == meta.Journal("overlay", "aufs", tuple(ids))
    with open(path, "ab") as f:
        f.write(b"abc")  # a crash in the middle of an append
    assert meta.read_journal(path) == meta.Journal("overlay", "aufs", tuple(ids))
    meta.write_journal(path, meta.Journal("aufs", "overlay", ("a", "b")))  # anew, whole
    assert meta.read_journal(path) == meta.Journal("aufs", "overlay", ("a", "b"))


@pytest.mark.parametrize(("content", "done"), [
    # version 1: one JSON object, the layers done in it
    (b'{"version": 1, "to": "overlay", "from": "aufs", "done": ["a", "b"]}\n', ("a", "b")),
    (b'{"to": "aufs", "from": "overlay", "done": []}', ()),
    (b'{"version": 2, "to": "overlay", "from": "aufs"}\na\nb\n', ("a", "b")),
    (b'{"version": 2, "to": "overlay", "from": "aufs"}', ()),
])
def test_conversion_journal_formats_read(tmp_path: Path, content: bytes,
                                         done: tuple[str, ...]) -> None:
    path = tmp_path / "convert.json"
    path.write_bytes(content)
    journal = meta.read_journal(str(path))
    assert journal is not None and journal.done == done


@pytest.mark.parametrize("content", [
    b"{torn",
    b"[]\n",
    b'{"version": 2, "to": "zfs", "from": "aufs"}\n',
    b'{"version": 2, "to": "overlay", "from": "aufs"}\n../../etc\n',
    b'{"version": 2, "to": "overlay", "from": "aufs"}\n\n',
    b'{"version": 2, "to": "overlay", "from": "aufs"}\n\xff\xfe\n',
    b'{"version": 1, "to": "overlay", "from": "aufs", "done": ["a/b"]}',
    b'{"version": 1, "to": "overlay", "from": "aufs"}',
    b'{"version": 3, "to": "overlay", "from": "aufs"}\na\n',  # a later aufs's
    b'{"version": "2", "to": "overlay", "from": "aufs"}\na\n',
    b'{"version": true, "to": "overlay", "from": "aufs", "done": []}',
    b'{"version": 1, "to": "overlay", "from": "aufs", "done": "abc"}',  # not a, b and c
    b'{"version": 1, "to": "overlay", "from": "aufs", "done": {"a": 1}}',
])
def test_conversion_journal_that_is_not_ours_is_unreadable(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "convert.json"
    path.write_bytes(content)
    with pytest.raises(DriverError, match="unreadable conversion journal"):
        meta.read_journal(str(path))


def test_conversion_journal_is_read_without_following_or_waiting(tmp_path: Path) -> None:
    """The store's own file, not trusted: a symlink is not followed, a FIFO not waited on,
    a huge file not read whole."""
    real = tmp_path / "real.json"
    meta.write_journal(str(real), meta.Journal("overlay", "aufs"))
    link = tmp_path / "link.json"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.write(b'{"version": 2, "to": "overlay", "from": "aufs"}\n')
        f.truncate(65 << 20)
    for path in (link, fifo, huge):
        with pytest.raises(DriverError, match="unreadable conversion journal"):
            meta.read_journal(str(path))
    if os.geteuid() == 0:  # a device is not read from (/dev/zero would give 64 MiB)
        device = tmp_path / "zero.json"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        with pytest.raises(DriverError, match="journal: is a device, not a conversion") as info:
            meta.read_journal(str(device))
        assert str(info.value).count(str(device)) == 1
