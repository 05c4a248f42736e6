"""The ``aufs`` command line: a layer store for people and scripts.

``aufs [--root DIR] [--engine E] [--json] [--debug] COMMAND ...``

Exit status: 0 done, 1 the operation failed, 2 the command line was wrong. Every error
is one line on stderr, made in one place (:func:`_failure`); ``--debug`` shows the
traceback instead. Each command opens the store, runs, and closes it (which releases the
store root's private bind mount when no union is under it) — never a ``cleanup``: a
``mount`` stays mounted after the process exits, and a later ``umount`` in another
process unmounts it (reference counts are on disk).

Here: :func:`main` and the error lines. :mod:`.context` opens the store for a command,
:mod:`.layers` has the commands on layers, :mod:`.streams` those that move tar streams,
:mod:`.parser` the command line itself.
"""

from __future__ import annotations

import contextlib
import os
import sys

from aufs.cli.context import EXIT_FAILED, EXIT_USAGE, Context, Failed, UsageError
from aufs.cli.parser import build_parser, resolve
from aufs.errors import (
    ArchiveError,
    DriverError,
    ImageError,
    InvalidLayerIDError,
    InvalidNameError,
    RegistryError,
)

__all__ = ["entry", "main"]


# -- errors: the one place an exception becomes a line ---------------------------------

def _failure(exc: BaseException) -> tuple[int, str]:
    """Exit status and the one line to print for ``exc``."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, InvalidLayerIDError | InvalidNameError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, DriverError | ArchiveError | ImageError | RegistryError | ValueError
                  | Failed):
        return EXIT_FAILED, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.filename is not None:
            what = f"{exc.filename}: {what}"
        if isinstance(exc, PermissionError) and os.geteuid() != 0:
            what += " (mounting layers needs root)"
        return EXIT_FAILED, what
    return EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc} (run with --debug)"


def main(argv: list[str] | None = None) -> int:
    return _run(argv)[0]


def _run(argv: list[str] | None) -> tuple[int, bool]:
    """:func:`main`, and whether the command was one that only reads the store and it
    returned (every file it opened closed, its output flushed)."""
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return (exc.code if isinstance(exc.code, int) else EXIT_USAGE), False
    from aufs._sys.files import raise_fd_limit

    raise_fd_limit()  # deep layers: the export walk may hold an fd a level
    ctx = Context(args)
    try:
        try:
            resolve(args.func)(ctx)
        finally:
            ctx.close()
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("aufs: interrupted", file=sys.stderr)
        return 130, False
    except BrokenPipeError:
        # The reader went away (`aufs ls | head`): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED, False
    except Exception as exc:
        if args.debug:
            raise
        code, line = _failure(exc)
        print(f"aufs: {line}", file=sys.stderr)
        return code, False
    return ctx.status, bool(getattr(args, "reads", False))


def entry() -> None:
    code, done = _run(None)
    if done:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> None:
    """End the process at once (``os._exit``) after the exit hooks, without the
    interpreter's teardown: it frees every module's objects one by one and collects once
    more, 10 ms of a whole ``aufs diff | cat`` here. Only after a command that only
    reads the store returned — its files closed by their ``with``, the store closed —,
    with stdout and stderr flushed and no thread but this one; otherwise (it returns)
    the caller exits the normal way."""
    import atexit

    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # the normal exit reports it
        return
    atexit._run_exitfuncs()  # what Python runs at exit (here: certifi's, from site)
    with contextlib.suppress(Exception):
        sys.stderr.flush()  # what a hook printed
    os._exit(code)
