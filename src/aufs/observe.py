"""Who wants to hear about tar entries as they pass (a progress bar), without an API change.

The archive code asks :func:`entry_hook` once per operation and, when a hook is set, calls
it once per tar entry it writes or extracts. A caller sets the hook for a block of code with
:func:`counting_entries`; it is a context variable, so threads and other callers are not
affected, and the hot loops pay one ``is None`` test per entry when nobody listens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

EntryHook = Callable[[], None]

_hook: ContextVar[EntryHook | None] = ContextVar("aufs_entry_hook", default=None)


def entry_hook() -> EntryHook | None:
    """The hook set by the innermost :func:`counting_entries`, or None."""
    return _hook.get()


@contextlib.contextmanager
def counting_entries(hook: EntryHook | None) -> Iterator[None]:
    """Call ``hook()`` for every tar entry written or extracted inside the block."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
