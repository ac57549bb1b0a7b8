# cython: language_level=3
"""Placeholder kernel; replaced by the FTRL-Proximal implementation (issue 5)."""

def kernel_version() -> int:
    return 0
