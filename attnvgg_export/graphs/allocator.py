"""The C allocator of a build process, set to keep the memory it frees.

glibc serves every block over 32 MiB with its own mmap and unmaps it on free. Every VGG16
activation at batch 8 and 224x224 is such a block (up to 100 MB), so each batch faults the
same memory in again, 4 KiB at a time, and zeroes it. On the 2-core VMs this toolchain is built
on that was a third of a channels-last eager batch (940 -> 619 ms at batch 8 and 224:
`python -m benchmarks.eager_settings`) and 61 of the precision stage's 216 CPU-seconds, as
system time (docs/precision.md, "Where the precision stage's time goes"). With mmap off and no
trimming, freed blocks stay in the heap and the next batch reuses them.

The cost is fragmentation: torch allocates 64-byte aligned blocks, which a freed block of the
same size cannot always serve, so the heap can grow past what is live. Only the precision stage
sets it (its peak: 4.2 GiB before, 4.3 GiB after); a full `make engine` with the parity gate
set too peaked at 5.4 GiB, against 4.2 GiB for the gate alone with glibc's defaults. The speed
report measures each runtime in a process as a user's would start, with glibc's defaults.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """True where the C library took the settings (glibc on Linux); elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
