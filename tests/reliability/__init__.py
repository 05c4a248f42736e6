"""Reliability: crash consistency, load, hostile input and resource faults (issue 6).

The helpers here (``invariants``, ``crashlib``, ``loadlib``, ``hostile``, ``loopfs``) are
shared by the CI tests in this package and by the long runs in ``stress/`` and ``fuzz/``.
"""
