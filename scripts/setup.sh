#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (as root) for aufs: system packages and the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    fuse-overlayfs fuse3 libarchive13 libarchive-tools skopeo umoci e2fsprogs \
    docker.io docker-registry busybox-static podman debootstrap >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
