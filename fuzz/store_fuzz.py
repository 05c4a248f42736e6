"""atheris fuzz target over random store contents (issue 13: a store that cannot be
turned against its host). Outside CI; ``tests/reliability/test_store_fuzz.py`` runs the
same harness for a bounded number of inputs in the suite.

    pip install atheris
    python fuzz/store_fuzz.py -max_total_time=600        # libFuzzer flags pass through

Each input damages a small store (``tests/reliability/storefuzz.py``: hostile lines in
``layers/<id>``, symlinks, directories and FIFOs where files belong, leftovers with
invalid ids, ``mnt/<id>`` pointing out of the store…), then every driver command runs
on every layer, and ``aufs check --repair``. A raw exception, a changed victim directory,
a union that stacks a directory from outside the store or a mount left behind is a
crash: libFuzzer saves the input under ``fuzz/crashes/``.

The store lives on a private tmpfs, unmounted afterwards whatever happened; a short
report goes to ``stress/results/``.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def child(workdir: str, argv: list[str]) -> None:
    """Run libFuzzer in this process (never returns)."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    with atheris.instrument_imports(include=["aufs"]):
        importlib.import_module("aufs.store.check")  # and with it the store and driver
    from tests.reliability.storefuzz import StoreHarness

    harness = StoreHarness(Path(workdir))
    atheris.Setup(argv, harness.run)
    atheris.Fuzz()


def parent(argv: list[str]) -> int:
    from tests.reliability.loopfs import unmount_all

    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    corpus = HERE / "corpus-store"
    corpus.mkdir(exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="aufs-store-fuzz-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", workdir],
                   check=True, capture_output=True)
    before = set(os.listdir(crashes))
    start = time.monotonic()
    try:
        fuzz_args = [a for a in argv if a.startswith("-")]
        extra = [a for a in argv if not a.startswith("-")] or [str(corpus)]
        cmd = [sys.executable, __file__, "--child", workdir, *fuzz_args,
               f"-artifact_prefix={crashes}/", "-print_final_stats=1", *extra]
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(proc.stderr[-20000:])
    finally:
        elapsed = time.monotonic() - start
        unmount_all(Path(workdir))
        os.rmdir(workdir)
    found = sorted(set(os.listdir(crashes)) - before)
    stats = dict(re.findall(r"^stat::(\w+):\s*(\d+)", proc.stderr, re.M))
    report = {
        "what": "fuzz store contents (atheris)", "args": argv,
        "seconds": round(elapsed, 1),
        "executions": int(stats.get("number_of_executed_units", 0)),
        "exit_code": proc.returncode, "new_crash_files": found,
    }
    from stress.report import write_report

    write_report("fuzz-store", report)
    return 0 if proc.returncode == 0 and not found else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], [sys.argv[0], *sys.argv[3:]])
    else:
        sys.exit(parent(sys.argv[1:]))
