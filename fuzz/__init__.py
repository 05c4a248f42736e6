"""Fuzzing of hostile input (issue 6), outside CI: see apply_fuzz.py."""
