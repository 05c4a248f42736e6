"""Thin, typed wrappers over Linux system calls (ctypes), errno raised as OSError."""
