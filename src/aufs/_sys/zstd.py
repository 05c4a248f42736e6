"""Streaming zstd decompression through the system's libzstd (ctypes).

``ZSTD_decompressStream`` writes into an output buffer of our size, so a small input
never becomes a huge allocation (the ``zstandard`` package's ``decompressobj`` has no
output bound), and its return value says whether the last frame was complete (its
``stream_reader`` ends silently on a truncated frame). The GIL is released during each
call (ctypes), so decompression runs beside Python code in other threads.

:func:`available` is False where no libzstd is installed; callers then fall back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator

__all__ = ["ZstdError", "available", "decompress_stream"]


class ZstdError(ValueError):
    """A malformed or truncated zstd stream."""


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


def _load() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("zstd"), "libzstd.so.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.ZSTD_createDCtx.restype = ctypes.c_void_p
        lib.ZSTD_createDCtx.argtypes = []
        lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
        lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_decompressStream.restype = ctypes.c_size_t
        lib.ZSTD_decompressStream.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(_OutBuffer), ctypes.POINTER(_InBuffer)]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        return lib
    return None


_lib = _load()


def available() -> bool:
    return _lib is not None


def decompress_stream(read: Callable[[], bytes], first: bytes, chunk: int
                      ) -> Iterator[bytes]:
    """Decompress the concatenated zstd frames ``first`` + ``read()``… (``read`` returns
    ``b""`` at the end) into pieces of at most ``chunk`` bytes. Raises ZstdError."""
    lib = _lib
    if lib is None:
        raise ZstdError("libzstd is not installed")
    ctx = lib.ZSTD_createDCtx()
    if not ctx:
        raise MemoryError("ZSTD_createDCtx")
    try:
        out = ctypes.create_string_buffer(chunk)
        ob = _OutBuffer(ctypes.addressof(out), chunk, 0)
        ib = _InBuffer(None, 0, 0)
        pending = 0  # ZSTD_decompressStream's last answer: 0 once a frame is complete
        data = first
        while True:
            if not pending:  # between frames: NUL padding (bsdtar pads its output) is skipped
                data = data.lstrip(b"\0")
            if not data:
                data = read()
                if not data:
                    break
                continue
            src = ctypes.c_char_p(data)  # keeps ``data`` alive for the call
            ib.src, ib.size, ib.pos = ctypes.cast(src, ctypes.c_void_p), len(data), 0
            while True:
                ob.pos = 0
                pending = lib.ZSTD_decompressStream(ctx, ctypes.byref(ob), ctypes.byref(ib))
                if lib.ZSTD_isError(pending):
                    name = lib.ZSTD_getErrorName(pending).decode(errors="replace")
                    raise ZstdError(f"malformed zstd stream: {name}")
                if ob.pos:
                    yield ctypes.string_at(out, ob.pos)
                if not pending or (ib.pos >= ib.size and ob.pos < ob.size):
                    break  # a frame ended (all flushed), or input used up, none buffered
            data = data[ib.pos:]
        if pending != 0:
            raise ZstdError("truncated zstd stream")
    finally:
        lib.ZSTD_freeDCtx(ctx)
