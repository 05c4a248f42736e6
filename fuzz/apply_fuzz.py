"""atheris fuzz target for ``Driver.apply_diff`` (issue 6: hostile input). Outside CI.

    pip install atheris
    python fuzz/apply_fuzz.py -max_total_time=600        # libFuzzer flags pass through
    python fuzz/apply_fuzz.py --structured -max_total_time=600

Raw mode mutates tar bytes (seeded with real layers and the breakout corpus); structured
mode turns each input into a tar built from tricky names, types, link targets and PAX
records (``hostile.structured_tar``), which reaches the extractor's logic far more often.

Each input is applied to a layer ``L`` (child of ``P``) of a store on a private tmpfs
(so that a decompression bomb ends in ENOSPC, not a full disk). The layer holds
symlinks pointing out of it, at a victim directory beside the store. What must hold
(``tests/reliability/hostile.py`` checks it): only ``ArchiveError``/``BreakoutError``
escape; nothing outside ``diff/L`` is touched or read; after a failure the layer is
exactly as before. A broken promise is a crash: libFuzzer saves the input under
``fuzz/crashes/``; each one becomes a regression case in ``tests/reliability/``.

The fuzzing runs in a child process; this parent makes the tmpfs and the seed corpus
first and afterwards unmounts everything, whatever happened, then writes a short report
to ``stress/results/``.
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

TMPFS_SIZE = "256m"


def child(workdir: str, structured: bool, argv: list[str]) -> None:
    """Run libFuzzer in this process (never returns)."""
    import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

    with atheris.instrument_imports(include=["aufs"]):
        importlib.import_module("aufs.archive.apply")  # and with it the rest of aufs
    from tests.reliability import hostile

    harness = hostile.ApplyHarness(Path(workdir))
    os.chdir(workdir)  # absolute escapes (/proc/self/cwd/victim) aim at the victim

    def test_one_input(data: bytes) -> None:
        tar = hostile.structured_tar(data) if structured else data
        harness.apply(tar, limit=hostile.is_space_error)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def parent(argv: list[str]) -> int:
    from fuzz import make_corpus
    from tests.reliability import invariants
    from tests.reliability.loopfs import unmount_all

    corpus = HERE / "corpus"
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    n = make_corpus.write_corpus(corpus)
    workdir = tempfile.mkdtemp(prefix="aufs-fuzz-")
    _run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", workdir)
    before = set(os.listdir(crashes))
    start = time.monotonic()
    structured = "--structured" in argv
    try:
        fuzz_args = [a for a in argv if a.startswith("-") and a != "--structured"]
        extra = [a for a in argv if not a.startswith("-")]
        if structured and not extra:  # its inputs are choices, not tars: own corpus
            (HERE / "corpus-structured").mkdir(exist_ok=True)
            extra = [str(HERE / "corpus-structured")]
        cmd = [sys.executable, __file__, "--child", workdir, str(int(structured)),
               *fuzz_args, f"-artifact_prefix={crashes}/", "-print_final_stats=1",
               *(extra or [str(corpus)])]
        print(f"{n} seeds in {corpus}; fuzzing in {workdir}", flush=True)
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(proc.stderr[-20000:])
    finally:
        elapsed = time.monotonic() - start
        leaked = []
        store = os.path.join(workdir, "store")
        if os.path.isdir(store):
            import aufs

            try:
                aufs.init(store, ["aufs.engine=overlay"]).cleanup()
            except Exception as exc:
                leaked.append(f"cleanup failed: {exc}")
            leaked += invariants.leak_problems(store)
        unmount_all(Path(workdir))
        os.rmdir(workdir)
    found = sorted(set(os.listdir(crashes)) - before)
    stats = dict(re.findall(r"^stat::(\w+):\s*(\d+)", proc.stderr, re.M))
    report = {
        "what": f"fuzz apply_diff (atheris, {'structured' if structured else 'raw'} inputs)",
        "args": argv, "seconds": round(elapsed, 1),
        "seeds": n, "executions": int(stats.get("number_of_executed_units", 0)),
        "exit_code": proc.returncode, "new_crash_files": found, "leaks": leaked,
    }
    from stress.report import write_report

    write_report("fuzz-apply", report)
    return 0 if proc.returncode == 0 and not found and not leaked else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1", [sys.argv[0], *sys.argv[4:]])
    else:
        sys.exit(parent(sys.argv[1:]))
