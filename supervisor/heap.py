"""Keep freed memory in the process's heap, for a daemon that moves event runs through it.

A runner's run of events reaches the supervisor as one message of up to ``MAX_BATCH`` events
(hundreds of KiB at 1 KiB an event), and each one passes through fresh buffers: the received
frame's bytes, the run with its ``seq`` prepended. glibc's malloc serves blocks that large with
``mmap`` and hands them back with ``munmap``, or trims the heap top after a free, so the next
run's buffers fault in every page again: measured in the supervisor beside a CPU-bound job per
core, 0.28 page faults per 1 KiB event, about a tenth of its CPU (zeroing pages, charging them
to the cgroup). With the thresholds raised, freed blocks stay in the heap for the next run
(0.00–0.02 faults an event). What the heap then keeps is bounded by the daemon's own peak.

``keep_freed_memory()`` is a no-op (False) where the C library has no ``mallopt`` (not glibc).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap, not their own ``mmap``: a message of ``MAX_BATCH``
#: events of 8 KiB fits (glibc's ceiling is 32 MiB on 64-bit hosts).
MMAP_THRESHOLD = 8 << 20
#: Free memory at the heap's top is handed back to the system only beyond this.
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Raise malloc's mmap and trim thresholds for this process (see the module docstring);
    True where the C library took both."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    took = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not took:
        log.debug("mallopt did not take the heap thresholds: freed memory may go back to the system")
    return took
