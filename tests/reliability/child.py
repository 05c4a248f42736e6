"""The process that gets killed: runs one kind of store operation in a loop, through the API.

Run as ``python child.py``; it imports everything first, then reads one JSON command
line from stdin (so a parent can start it ahead of time), opens the store, writes
``started`` and then, for every operation, ``B <op> <id>`` before and ``E <op> <id>``
after it, unbuffered, on stdout. The parent kills it with SIGKILL at a random moment.

Commands: ``{"mode": M, "root": R, "engine": E, "seed": S, "args": {...}}`` with M one of
``init``, ``create``, ``remove``, ``apply``, ``getput``, ``convert``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import sys
import time
from typing import Any

import aufs
import aufs.archive

for _lazy in ("aufs.archive.apply", "aufs.convert"):  # imported by the driver on first use
    with contextlib.suppress(ImportError):
        importlib.import_module(_lazy)


def say(*words: str) -> None:
    os.write(1, (" ".join(words) + "\n").encode())


def idle() -> None:
    say("idle")
    while True:
        time.sleep(1)


def run_init(root: str, opts: list[str], rng: random.Random, args: dict[str, Any]) -> None:
    while True:
        say("B", "init", "-")
        d = aufs.init(root, opts)
        say("E", "init", "-")
        if rng.random() < 0.5:
            d.close()


def run_create(d: aufs.Driver, rng: random.Random, args: dict[str, Any]) -> None:
    existing = d.ids()
    tag = args["tag"]
    for i in range(args.get("max", 10_000)):
        layer_id = f"{tag}-{i}"
        parent = rng.choice([*existing, "", ""]) if existing else ""
        say("B", "create", layer_id)
        d.create(layer_id, parent)
        say("E", "create", layer_id)
        existing.append(layer_id)
    idle()


def run_remove(d: aufs.Driver, rng: random.Random, args: dict[str, Any]) -> None:
    mount_first = float(args.get("mount_first", 0.0))
    while True:
        ids = d.ids()
        parents = {c[0] for c in (d.parents(i) for i in ids) if c}
        leaves = [i for i in ids if i not in parents]
        if not leaves:
            idle()
        victim = rng.choice(leaves)
        if rng.random() < mount_first:
            say("B", "get", victim)
            d.get(victim)
            say("E", "get", victim)
        say("B", "remove", victim)
        d.remove(victim)
        say("E", "remove", victim)


def run_apply(d: aufs.Driver, rng: random.Random, args: dict[str, Any]) -> None:
    with open(args["tar"], "rb") as f:
        say("B", "apply", args["id"])
        d.apply_diff(args["id"], args.get("parent", ""), f)
        say("E", "apply", args["id"])
    idle()


def run_getput(d: aufs.Driver, rng: random.Random, args: dict[str, Any]) -> None:
    ids: list[str] = args["ids"]
    held: list[str] = []
    while True:
        if held and rng.random() < 0.45:
            layer_id = held.pop(rng.randrange(len(held)))
            say("B", "put", layer_id)
            d.put(layer_id)
            say("E", "put", layer_id)
        else:
            layer_id = rng.choice(ids)
            say("B", "get", layer_id)
            d.get(layer_id)
            say("E", "get", layer_id)
            held.append(layer_id)


def run_convert(root: str, args: dict[str, Any]) -> None:
    """``aufs convert`` works on a closed store: no driver is opened first."""
    convert = importlib.import_module("aufs.convert")
    say("B", "convert", args["to"])
    convert.convert(root, args["to"])
    say("E", "convert", args["to"])
    idle()


def main() -> None:
    cmd = json.loads(sys.stdin.readline())
    rng = random.Random(cmd["seed"])
    opts = [f"aufs.engine={cmd['engine']}"]
    args: dict[str, Any] = cmd.get("args", {})
    if cmd["mode"] == "init":
        say("started")
        run_init(cmd["root"], opts, rng, args)
    if cmd["mode"] == "convert":
        say("started")
        run_convert(cmd["root"], args)
    d = aufs.init(cmd["root"], opts)
    say("started")
    runner = {"create": run_create, "remove": run_remove, "apply": run_apply,
              "getput": run_getput}[cmd["mode"]]
    runner(d, rng, args)


if __name__ == "__main__":
    main()
