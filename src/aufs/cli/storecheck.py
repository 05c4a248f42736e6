"""``aufs check [--repair] [--json]``: the store's integrity (:mod:`aufs.store.check`).

It opens no driver: no start-up recovery runs first (it would hide the leftovers the
check reports) and nothing is mounted. A store without our ``.aufs/`` directory (a
Docker aufs store) is checked without taking the lock and without writing a byte;
``--repair`` creates it to take the lock.
"""

from __future__ import annotations

import os

from aufs._sys import fsinfo
from aufs._sys.files import ensure_dir
from aufs.cli.context import EXIT_FAILED, Context
from aufs.errors import DriverError
from aufs.store import check as checker
from aufs.store.chain import not_a_dir
from aufs.store.layout import Layout
from aufs.store.lock import StoreLock


def check(ctx: Context) -> None:
    layout = Layout.at(os.path.realpath(ctx.root))
    if not os.path.isdir(layout.layers_dir):
        raise DriverError(f"{layout.root} is not a layer store (it has no layers/ directory)")
    repair = bool(ctx.args.repair)
    read_only = fsinfo.read_only(layout.root)
    if repair and read_only:
        raise DriverError(f"the store root {layout.root} is read-only (nothing can be "
                          f"repaired)")
    if repair:
        ensure_dir(layout.private_dir)
    # A read-only store is checked without the lock: its file cannot be opened for
    # writing there, and nothing changes the store meanwhile.
    if (os.path.isdir(layout.private_dir) and not not_a_dir(layout.private_dir)
            and not read_only):
        with StoreLock(layout.lock_file).hold():
            report = checker.check(layout)
            if repair:
                checker.repair(layout, report)
    else:  # no .aufs/ (a Docker store, read only), one that is no directory, read-only
        report = checker.check(layout)
        if repair:
            checker.repair(layout, report)  # .aufs/ no directory: a store-dir, nothing done
    if ctx.args.json:
        ctx.out(report.as_json())
    else:
        _print(report, repair)
    if (report.left if repair else report.problems):
        ctx.status = EXIT_FAILED


def _print(report: checker.Report, repair: bool) -> None:
    for problem in report.problems:
        print(problem)
    if repair:
        for done in report.repaired:
            print(f"repaired: {done}")
        for problem in report.left:
            print(f"left: {problem}")
    n = len(report.problems)
    if not n:
        print(f"{report.root}: {report.layers} layers, no problems")
    elif repair:
        print(f"{report.root}: {n} problems, {len(report.repaired)} repaired, "
              f"{len(report.left)} left")
    else:
        print(f"{report.root}: {n} problems (aufs check --repair fixes what it can)")
