#!/usr/bin/env bash
# The main job, on the sample image shipped in examples/ (no network):
# import an OCI image, mount it, change a file, list the changes, write the diff to a
# file, draw the tree, unmount, clean up -- and check that no mount is left behind.
# Run from anywhere, as root:  bash examples/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

work=$(mktemp -d "${TMPDIR:-/tmp}/aufs-demo.XXXXXX")
root="$work/store"
aufs() { python3 -m aufs --root "$root" "$@"; }
finish() {
    status=$?
    aufs cleanup 2>/dev/null || true
    if grep -q " $work/" /proc/self/mountinfo; then
        echo "demo: FAILED: mounts left under $work" >&2
        status=1
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap finish EXIT

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; }

step "python3 examples/build_sample.py sample.tar"
python3 examples/build_sample.py "$work/sample.tar"

step "aufs import sample.tar --name sample"
top=$(aufs import "$work/sample.tar" --name sample)
echo "$top"

step "aufs create work --parent sample     # a writable layer on top of the image"
aufs create work --parent sample

step "aufs mount work"
mnt=$(aufs mount work)
echo "$mnt"
cat "$mnt/etc/hostname"
"$mnt/app/hello.sh"

step "change files in the mount"
echo "demo" > "$mnt/etc/hostname"
echo "new" > "$mnt/app/new.txt"
rm "$mnt/etc/passwd"

step "aufs changes work"
aufs changes work

step "aufs diff work -o work.tar && tar tvf work.tar"
aufs diff work -o "$work/work.tar"
tar tvf "$work/work.tar"

step "aufs tree"
aufs tree

step "aufs umount work"
aufs umount work

step "aufs cleanup"
aufs cleanup
if grep -q " $work/" /proc/self/mountinfo; then
    echo "demo: a mount is still there" >&2
    exit 1
fi
echo "demo: done, no mount left"
