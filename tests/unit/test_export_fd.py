"""A diff written into a file descriptor (``write_into``/``write_stream``): the same bytes
as reading it, file data by ``sendfile``, into pipes, files and append-only files."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aufs.archive.export import export_layer
from aufs.archive.stream import SENDFILE_MIN, write_stream


def _tree(root: Path) -> Path:
    root.mkdir()
    (root / "dir").mkdir()
    for i in range(40):  # small files, gathered in the buffer
        (root / "dir" / f"f{i:02}").write_bytes(bytes([i]) * (i * 97))
    (root / "big").write_bytes(os.urandom(SENDFILE_MIN + 4097))  # by sendfile, odd length
    (root / "bigger").write_bytes(b"\x07" * (3 * SENDFILE_MIN))
    with open(root / "sparse", "wb") as f:  # holes: through the buffer, as zeros
        f.truncate(2 * SENDFILE_MIN)
        f.seek(SENDFILE_MIN)
        f.write(b"data in the middle")
    os.link(root / "big", root / "dir" / "link-to-big")
    os.symlink("big", root / "sym")
    return root


def _read_all(root: Path) -> bytes:
    with export_layer(str(root)) as s:
        return s.read()


def _through_pipe(write: Callable[[int], object]) -> bytes:
    r, w = os.pipe()
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    try:
        write(w)
    finally:
        os.close(w)
        t.join()
        os.close(r)
    return bytes(got)


def test_into_a_pipe_same_bytes_as_read_and_file_data_by_sendfile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "layer")
    expected = _read_all(root)
    sent: list[int] = []
    real = os.sendfile

    def counting(out: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real(out, in_fd, offset, count)
        sent.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    progress: list[int] = []
    with export_layer(str(root)) as s:
        got = _through_pipe(lambda fd: write_stream(s, fd, progress.append))
    assert got == expected
    assert sum(progress) == len(expected)
    # big and bigger went by sendfile (the hard link is a link member, without data)
    assert sum(sent) == (SENDFILE_MIN + 4097) + 3 * SENDFILE_MIN


def test_into_a_file_after_a_partial_read(tmp_path: Path) -> None:
    root = _tree(tmp_path / "layer")
    expected = _read_all(root)
    out = tmp_path / "out.tar"
    with export_layer(str(root)) as s, open(out, "wb") as f:
        head = s.read(1000)  # the reader's buffer holds more than it returned
        f.write(head)
        f.flush()
        assert write_stream(s, f.fileno()) == len(expected) - 1000
    assert out.read_bytes() == expected


def test_an_output_that_cannot_take_sendfile_gets_the_buffer(tmp_path: Path) -> None:
    """sendfile into an O_APPEND file fails with EINVAL: the data goes through the
    buffer instead, the bytes are the same."""
    root = _tree(tmp_path / "layer")
    expected = _read_all(root)
    out = tmp_path / "out.tar"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        with export_layer(str(root)) as s:
            assert write_stream(s, fd) == len(expected)
    finally:
        os.close(fd)
    assert out.read_bytes() == expected


def test_any_other_stream_is_copied_through_one_buffer(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        assert write_stream(io.BytesIO(data), f.fileno()) == len(data)
    assert out.read_bytes() == data


def test_a_reader_gone_is_the_writers_error_not_an_archive_error(tmp_path: Path) -> None:
    root = _tree(tmp_path / "layer")
    r, w = os.pipe()
    os.close(r)
    try:
        with export_layer(str(root)) as s, pytest.raises(BrokenPipeError):
            write_stream(s, w)
    finally:
        os.close(w)


def test_a_pipe_is_grown_to_a_mib(tmp_path: Path) -> None:
    """Writing a MiB at a time into a 64 KiB pipe waits for the reader 16 times a MiB."""
    import fcntl

    root = _tree(tmp_path / "layer")
    sizes: list[int] = []

    def write(fd: int) -> None:
        with export_layer(str(root)) as s:
            write_stream(s, fd)
        sizes.append(fcntl.fcntl(fd, 1032))  # F_GETPIPE_SZ

    _through_pipe(write)
    assert sizes == [1 << 20]
