"""aufs._sys.safefs: resolution that never follows a symlink (openat2 and the
component walk), removal that neither follows symlinks nor recurses, the atomic swap."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aufs._sys import safefs


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "openat2":
        if not safefs.has_openat2():
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(safefs, "has_openat2", lambda: False)
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "file").write_text("f")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "abs")
    os.symlink("../..", root / "a" / "up")
    os.symlink("b", root / "a" / "rel")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield root, fd
    finally:
        os.close(fd)


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_open_beneath(tree: tuple[Path, int], resolution: str) -> None:
    root, fd = tree
    assert _where(safefs.open_beneath(fd, "a/b")) == str(root / "a" / "b")
    assert _where(safefs.open_beneath(fd, "a")) == str(root / "a")
    for path in ("abs", "abs/x", "a/up", "a/up/outside", "a/rel", "a/rel/x"):
        with pytest.raises(safefs.SymlinkInPathError):
            os.close(safefs.open_beneath(fd, path))
    with pytest.raises(safefs.NotADirectoryInPathError):
        os.close(safefs.open_beneath(fd, "a/file/x"))
    with pytest.raises(safefs.NotADirectoryInPathError):
        os.close(safefs.open_beneath(fd, "a/file"))
    with pytest.raises(FileNotFoundError):
        os.close(safefs.open_beneath(fd, "a/missing/x"))


def test_open_dir_at_makes_and_refuses(tree: tuple[Path, int]) -> None:
    root, fd = tree
    assert _where(safefs.open_dir_at(fd, "new", create=0o750)) == str(root / "new")
    assert (root / "new").stat().st_mode & 0o777 == 0o750 & ~_umask()
    with pytest.raises(safefs.SymlinkInPathError):
        safefs.open_dir_at(fd, "abs", create=0o755)
    assert os.listdir(root.parent / "outside") == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_remove_at_never_follows(tree: tuple[Path, int]) -> None:
    root, fd = tree
    (root.parent / "outside" / "precious").write_text("p")
    assert safefs.remove_at(fd, "abs")  # the symlink goes, not what it points to
    assert (root.parent / "outside" / "precious").read_text() == "p"
    assert safefs.remove_at(fd, "a")
    assert not safefs.remove_at(fd, "a")
    assert sorted(os.listdir(root)) == []


def test_remove_at_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    import sys

    top = tmp_path / "deep"
    top.mkdir()
    cur = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(sys.getrecursionlimit() + 200):
        os.mkdir("d", dir_fd=cur)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
        if i % 97 == 0:
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=nxt))
        os.close(cur)
        cur = nxt
    os.close(cur)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert safefs.remove_at(fd, "deep")
    finally:
        os.close(fd)
    assert not top.exists()


def test_exchange(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").touch()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "from-b").touch()
    safefs.exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert os.listdir(tmp_path / "a") == ["from-b"]
    assert os.listdir(tmp_path / "b") == ["from-a"]
    with pytest.raises(FileNotFoundError):
        safefs.exchange(str(tmp_path / "a"), str(tmp_path / "missing"))


def test_dirfds_refuses_a_symlink_made_while_it_creates(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The extractor's directory cache: a directory found missing, then replaced by a
    symlink before it is made (a race), is a breakout, and nothing outside is touched."""
    from aufs.archive import BreakoutError
    from aufs.archive.dirfds import DirFds

    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    real = safefs.open_dir_at

    def racing(dir_fd: int, name: str, *, create: int | None = None) -> int:
        if create is None:
            os.symlink(outside, name, dir_fd=dir_fd)  # the other party wins the race
            raise FileNotFoundError(name)
        return real(dir_fd, name, create=create)

    monkeypatch.setattr(safefs, "open_dir_at", racing)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    made: list[str] = []
    cache = DirFds(fd, lambda path, replaced: made.append(path))
    try:
        with pytest.raises(BreakoutError, match="symlink"):
            cache.get("d")
    finally:
        cache.close()
        os.close(fd)
    assert made == [] and list(outside.iterdir()) == []


@pytest.mark.parametrize("shape", ["regular", "symlink", "dangling symlink", "directory",
                                   "fifo", "socket", "char device"])
@pytest.mark.parametrize("create", [False, True])
def test_open_regular_opens_a_regular_file_only(tmp_path: Path, shape: str,
                                                create: bool) -> None:
    """The store's own files: only a regular file comes back open; anything else comes
    back as its stat (fd -1), not followed, not created through, not waited on."""
    import socket
    import stat

    path = tmp_path / "f"
    target = tmp_path / "target"
    target.write_bytes(b"host file")
    if shape == "regular":
        path.write_bytes(b"3\n")
    elif shape == "symlink":
        path.symlink_to(target)
    elif shape == "dangling symlink":
        path.symlink_to(tmp_path / "nothing")
    elif shape == "directory":
        path.mkdir()
    elif shape == "fifo":
        os.mkfifo(path)  # an open for reading would not wait (O_NONBLOCK), but none is made
    elif shape == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    fd, st = safefs.open_regular(str(path), os.O_RDWR if create else os.O_RDONLY,
                                 create=create)
    if shape == "regular":
        assert fd >= 0 and stat.S_ISREG(st.st_mode)
        try:
            assert os.read(fd, 10) == b"3\n"
            if create:
                os.pwrite(fd, b"4", 0)
        finally:
            os.close(fd)
        assert path.read_bytes() == (b"4\n" if create else b"3\n")
    else:
        assert fd == -1
        kinds = {"symlink": stat.S_ISLNK, "dangling symlink": stat.S_ISLNK,
                 "directory": stat.S_ISDIR, "fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK,
                 "char device": stat.S_ISCHR}
        assert kinds[shape](st.st_mode)
    assert target.read_bytes() == b"host file"
    assert not (tmp_path / "nothing").exists()


def test_open_regular_creates_what_is_missing_only_if_asked(tmp_path: Path) -> None:
    path = tmp_path / "count"
    with pytest.raises(FileNotFoundError):
        safefs.open_regular(str(path))
    assert not path.exists()
    fd, st = safefs.open_regular(str(path), os.O_RDWR, create=True)
    try:
        assert st.st_size == 0 and os.write(fd, b"1\n") == 2
    finally:
        os.close(fd)
    assert path.read_bytes() == b"1\n" and path.stat().st_mode & 0o777 == 0o644 & ~_umask()
