"""Let a long-running process keep the memory it frees (glibc's malloc).

By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and returns it on free. A
network call that builds temporaries of that size (the demo mixture's (rows, components, dims) tensors at
a batch of 34 images are 53 MiB) then page-faults its memory in afresh on every call: about a quarter of
the call's time, spent zeroing pages in the kernel (``benchmarks/allocator.py`` measures it). Raising the
mmap and trim thresholds keeps such blocks in the heap for reuse. The cost: the process holds on to its
peak heap until it exits, which suits a workflow job; a library user can call this in their own script.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP_BYTES = 1 << 30       # blocks up to 1 GiB come from the heap, and up to 1 GiB of free top stays
TOP_PAD_BYTES = 256 << 20  # grow the heap in 256 MiB steps


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; False (nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):   # not glibc (musl, macOS, Windows): no mallopt
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, KEEP_BYTES), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, TOP_PAD_BYTES)))
