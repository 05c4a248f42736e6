"""``aufs import`` (docker save, OCI layout dir and tar) and ``aufs export`` (read back by
skopeo and umoci)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.cli.kit import (
    REPO,
    Aufs,
    chain_ids,
    docker_save_files,
    layer,
    oci_files,
    sha256,
    write_dir,
    write_tar,
)

BASE = layer({"etc/hostname": b"base\n", "etc/motd": b"hi\n", "bin/sh": b"#!sh\n"})
APP = layer({"etc/hostname": b"app\n", "app/run": b"run\n"}, deletions=("etc/motd",))
OTHER = layer({"srv/data": b"other\n"})


def _ids(cli: Aufs) -> list[str]:
    return sorted(r["id"] for r in cli.ok("ls", "--json").json())


def _tree(root: Path) -> dict[str, bytes | str | None]:
    """path -> content (files), link target (symlinks), None (dirs)."""
    out: dict[str, bytes | str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = os.readlink(p)
            elif p.is_dir():
                out[rel] = None
            else:
                out[rel] = p.read_bytes()
    return out


def test_import_the_sample_oci_tar(cli: Aufs, tmp_path: Path) -> None:
    archive = tmp_path / "sample.tar"
    subprocess.run(["python3", str(REPO / "examples" / "build_sample.py"), str(archive)],
                   check=True)
    top = cli.ok("import", str(archive), "--name", "sample").out.strip()
    assert len(top) == 64 and cli.ok("ls").out.count("\n") == 2
    row = next(r for r in cli.ok("ls", "--json").json() if r["id"] == top)
    assert row["names"] == ["sample"]
    mnt = Path(cli.ok("mount", "sample").out.strip())  # a name works as an id
    try:
        assert (mnt / "etc" / "hostname").read_text() == "app-1\n"
        assert (mnt / "etc" / "os-release").exists()
        assert not (mnt / "etc" / "motd").exists()  # deleted by the app layer's whiteout
        assert os.access(mnt / "app" / "hello.sh", os.X_OK)
    finally:
        cli.ok("umount", "sample")


def test_oci_dir_tar_and_docker_save_give_the_same_chain(cli: Aufs, tmp_path: Path) -> None:
    expected = chain_ids([BASE, APP])
    oci_dir = write_dir(oci_files([BASE, APP]), tmp_path / "oci")
    assert cli.ok("import", str(oci_dir)).out == expected[-1] + "\n"
    assert _ids(cli) == sorted(expected)
    rows = {r["id"]: r for r in cli.ok("ls", "--json").json()}
    assert rows[expected[1]]["parent"] == expected[0]
    assert cli.ok("changes", expected[1]).out.splitlines() == [
        "A /app", "A /app/run", "C /etc", "C /etc/hostname", "D /etc/motd"]
    # The same image again, as a tar and as a docker save: nothing new is stored.
    oci_tar = write_tar(oci_files([BASE, APP]), tmp_path / "oci.tar")
    assert cli.ok("import", str(oci_tar)).out == expected[-1] + "\n"
    saved = write_tar(docker_save_files([BASE, APP]), tmp_path / "saved.tar")
    assert cli.ok("import", str(saved), "--name", "app").out == expected[-1] + "\n"
    assert _ids(cli) == sorted(expected)


def test_docker_save_tarball(cli: Aufs, tmp_path: Path) -> None:
    saved = write_tar(docker_save_files([BASE, APP]), tmp_path / "saved.tar")
    top = cli.ok("import", str(saved)).out.strip()
    assert top == chain_ids([BASE, APP])[-1]
    assert cli.ok("size", top).out == "8\n"  # app/run + etc/hostname


def test_shared_base_is_stored_once(cli: Aufs, tmp_path: Path) -> None:
    a = write_tar(oci_files([BASE, APP]), tmp_path / "a.tar")
    b = write_tar(docker_save_files([BASE, OTHER]), tmp_path / "b.tar")
    top_a = cli.ok("import", str(a), "--name", "a").out.strip()
    top_b = cli.ok("import", str(b), "--name", "b").out.strip()
    base = chain_ids([BASE])[0]
    assert _ids(cli) == sorted({base, top_a, top_b})
    (root,) = cli.ok("tree", "--json").json()
    assert root["id"] == base
    assert sorted(c["id"] for c in root["children"]) == sorted([top_a, top_b])
    text = cli.ok("tree").out  # --name and the archives' own references
    assert "[a, latest]" in text and "[b, sample:latest]" in text
    cli.ok("rm", "b")  # rm by name drops the names too
    assert {n for r in cli.ok("ls", "--json").json() for n in r["names"]} == {"a", "latest"}


def test_corrupted_blob_leaves_nothing_behind(cli: Aufs, tmp_path: Path) -> None:
    cli.ok("import", str(write_dir(oci_files([BASE]), tmp_path / "base")))
    before = _ids(cli)
    files = oci_files([BASE, APP, OTHER])
    base_files = oci_files([BASE])
    app_blob = next(n for n, d in files.items() if n.startswith("blobs/")
                    and d[:2] == b"\x1f\x8b" and n not in base_files)
    data = bytearray(files[app_blob])
    data[4] ^= 0xFF  # gzip's mtime: only the digest can tell
    files[app_blob] = bytes(data)
    bad = write_dir(files, tmp_path / "bad")
    line = cli.fails(1, "import", str(bad))
    assert "digest mismatch" in line and app_blob.split("/")[-1] in line
    assert _ids(cli) == before  # the shared base stays, nothing new is left
    assert os.listdir(cli.root / "diff") == before
    assert not [n for n in os.listdir(cli.root / ".aufs" / "staging")]


def test_diff_id_mismatch_leaves_nothing_behind(cli: Aufs, tmp_path: Path) -> None:
    wrong = [sha256(BASE), sha256(OTHER)]  # the second layer is APP, not OTHER
    saved = write_tar(docker_save_files([BASE, APP], diff_ids=wrong), tmp_path / "s.tar")
    line = cli.fails(1, "import", str(saved))
    assert "diff id mismatch" in line
    assert _ids(cli) == []


def test_corrupted_manifest_digest(cli: Aufs, tmp_path: Path) -> None:
    files = oci_files([BASE])
    index = json.loads(files["index.json"])
    index["manifests"][0]["digest"] = "sha256:" + "0" * 64
    files["index.json"] = json.dumps(index).encode()
    files["blobs/sha256/" + "0" * 64] = b"{}"
    line = cli.fails(1, "import", str(write_dir(files, tmp_path / "x")))
    assert "digest mismatch" in line
    assert _ids(cli) == []


def test_bad_archives(cli: Aufs, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    assert "neither a tar archive nor a directory" in cli.fails(1, "import", str(junk))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not an image" in cli.fails(1, "import", str(empty))
    notjson = write_tar({"manifest.json": b"{nope"}, tmp_path / "nj.tar")
    assert "not valid JSON" in cli.fails(1, "import", str(notjson))
    files = docker_save_files([BASE])
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"] = ["../../etc/passwd"]
    files["manifest.json"] = json.dumps(manifest).encode()
    escape = write_dir(files, tmp_path / "escape")
    assert "outside the archive" in cli.fails(1, "import", str(escape))
    assert "invalid name" in cli.fails(2, "import", str(escape), "--name", "bad name")
    assert _ids(cli) == []


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install -y {tool})")


def test_export_read_by_skopeo_and_umoci(cli: Aufs, tmp_path: Path) -> None:
    _need("skopeo")
    _need("umoci")
    top = cli.ok("import", str(write_tar(oci_files([BASE, APP]), tmp_path / "in.tar"))).out
    top = top.strip()
    cli.ok("create", "work", "--parent", top)
    mnt = Path(cli.ok("mount", "work").out.strip())
    (mnt / "etc" / "hostname").write_text("work\n")
    (mnt / "bin" / "sh").unlink()
    (mnt / "new").mkdir()
    (mnt / "new" / "link").symlink_to("/etc/hostname")
    (mnt / "new" / "big").write_bytes(os.urandom(300_000))
    try:
        out = tmp_path / "image.tar"
        assert cli.ok("export", "work", "-o", str(out), "--tag", "v1").out == ""
        info = json.loads(subprocess.run(
            ["skopeo", "inspect", f"oci-archive:{out}:v1"], capture_output=True, check=True,
            timeout=120).stdout)
        assert len(info["Layers"]) == 3 and info["Os"] == "linux"
        raw = json.loads(subprocess.run(
            ["skopeo", "inspect", "--config", f"oci-archive:{out}:v1"], capture_output=True,
            check=True, timeout=120).stdout)
        assert len(raw["rootfs"]["diff_ids"]) == 3
        layout = tmp_path / "layout"
        layout.mkdir()
        with tarfile.open(out) as tar:
            tar.extractall(layout, filter="data")
        bundle = tmp_path / "bundle"
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)],
                       capture_output=True, check=True, timeout=120)
        assert _tree(bundle / "rootfs") == _tree(mnt)
        assert not (bundle / "rootfs" / "bin" / "sh").exists()
    finally:
        cli.ok("umount", "work")


def test_export_errors(cli: Aufs, tmp_path: Path) -> None:
    assert "no such layer" in cli.fails(1, "export", "nope", "-o", str(tmp_path / "x.tar"))
    assert "required" in cli.fails(2, "export", "nope")
    cli.ok("create", "base")
    line = cli.fails(1, "export", "base", "-o", str(tmp_path / "no" / "dir" / "x.tar"))
    assert "No such file or directory" in line
    assert not (tmp_path / "x.tar").exists()


def test_import_what_skopeo_writes(cli: Aufs, tmp_path: Path) -> None:
    """Real tools' layouts: skopeo's docker-archive (layer.tar symlinks) and OCI dir."""
    _need("skopeo")
    top = cli.ok("import", str(write_tar(oci_files([BASE, APP]), tmp_path / "in.tar")))
    exported = tmp_path / "e.tar"
    cli.ok("export", top.out.strip(), "-o", str(exported))
    targets = {"docker": f"docker-archive:{tmp_path / 'd.tar'}:sample:1",
               "oci": f"oci:{tmp_path / 'ocidir'}:x"}
    tops = set()
    for kind, target in targets.items():
        subprocess.run(["skopeo", "copy", "-q", f"oci-archive:{exported}:latest", target],
                       capture_output=True, check=True, timeout=120)
        other = Aufs(tmp_path / f"store-{kind}")
        try:
            archive = target.split(":")[1]
            tops.add(other.ok("import", archive).out.strip())
            assert other.ok("changes", next(iter(tops))).out.splitlines()[-1] == "D /etc/motd"
        finally:
            other.ok("cleanup")
    assert len(tops) == 1  # the same chain ids from both formats


def test_import_keeps_the_config_until_the_layer_goes(cli: Aufs, tmp_path: Path) -> None:
    files = docker_save_files([BASE, APP])
    config_name = json.loads(files["manifest.json"])[0]["Config"]
    top = cli.ok("import", str(write_tar(files, tmp_path / "s.tar"))).out.strip()
    kept = json.loads((cli.root / ".aufs" / "images" / f"{top}.json").read_text())
    assert kept["config"].encode() == files[config_name]  # byte for byte
    cli.ok("rm", top)
    assert not (cli.root / ".aufs" / "images" / f"{top}.json").exists()


def test_names_round_trip(cli: Aufs, tmp_path: Path) -> None:
    """Every RepoTags entry names the top layer; export writes a full reference back;
    OCI ref names come in as names too."""
    files = docker_save_files([BASE])
    manifest = json.loads(files["manifest.json"])
    manifest[0]["RepoTags"] = ["interop:3", "localhost:5000/team/app:v1", "bad name:1"]
    files["manifest.json"] = json.dumps(manifest).encode()
    top = cli.ok("import", str(write_tar(files, tmp_path / "s.tar"))).out.strip()
    (row,) = cli.ok("ls", "--json").json()
    assert row["names"] == ["interop:3", "localhost:5000/team/app:v1"]
    out = tmp_path / "d.tar"
    cli.ok("export", top, "-o", str(out), "--format", "docker-archive")
    with tarfile.open(out) as tar:
        entry = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
    assert entry["RepoTags"] == ["interop:3"]
    oci = tmp_path / "o.tar"
    cli.ok("export", top, "-o", str(oci), "--tag", "localhost:5000/team/app:v2")
    other = Aufs(tmp_path / "other")
    try:
        again = other.ok("import", str(oci)).out.strip()
        assert again == top
        (row,) = other.ok("ls", "--json").json()
        assert row["names"] == ["localhost:5000/team/app:v2"]
    finally:
        other.run("cleanup")
    assert "invalid name" in cli.fails(2, "export", top, "-o", str(oci), "--tag", "a b")
