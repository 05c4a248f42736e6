"""Pure parts of image import: chain ids, archive paths, digests named by file names."""

from __future__ import annotations

import hashlib

import pytest

from aufs.image import ImageError
from aufs.image.load import _named_digest, chain_ids
from aufs.image.source import clean


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = ("sha256:" + hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", ".", ""])
def test_clean_refuses_paths_out_of_the_archive(name: str) -> None:
    with pytest.raises(ImageError):
        clean(name)


def test_clean_normalizes() -> None:
    assert clean("./blobs//sha256/ab") == "blobs/sha256/ab"
    assert clean("a/b/../c") == "a/c"


def test_named_digest() -> None:
    h = "ab" * 32
    assert _named_digest(f"blobs/sha256/{h}") == f"sha256:{h}"
    assert _named_digest(f"{h}.json") == f"sha256:{h}"
    assert _named_digest(f"{h}/layer.tar") is None  # a v1 id, not a digest
    assert _named_digest("config.json") is None
