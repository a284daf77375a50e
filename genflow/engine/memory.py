"""Process memory settings for training on CPU.

glibc's malloc serves large blocks (over its mmap threshold, 128 KiB growing to 32 MiB) with fresh
`mmap`s and gives them back to the system when freed, so a training step whose activations are
hundreds of MiB faults every page in again on every step. Measured on digit4 steps at batch 512 x
500 points (AMD EPYC, 2 cores; 3 steps after a warm-up): 11.9 M minor page faults and 7.7 s per step,
against 1.9 M and 2.7 s with freed memory kept; `benchmarks/scaling.py [--glibc-default]` shows it per
batch size. The process's footprint stays at its peak, which a training step reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_applied = False


def keep_freed_memory() -> bool:
    """Keep large freed blocks in the process instead of returning them to the system (glibc only;
    elsewhere nothing changes). Returns whether the setting is in effect."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _applied
