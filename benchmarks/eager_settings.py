"""Eager PyTorch fp32, one batch, under the settings the build runs its eager references with;
each setting in a fresh process (the allocator is set before anything is allocated):

    .venv/bin/python -m benchmarks.eager_settings [--variant se] [--batch 8] [--size 224]

- NCHW, glibc's allocator: eager as a user's process runs it (the speed report's eager row)
- channels-last: ``attnvgg_export.runtime.eager.run_torch``, the gate's and the precision stage's references
- channels-last, freed memory kept: glibc told to keep what it frees (mmap and trimming off),
  which the precision stage set until its peak memory counted more (docs/precision.md)
- channels-last, huge pages: glibc's large blocks on transparent huge pages
  (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc >= 2.35), as ``make precision`` runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HUGE_PAGES = "glibc.malloc.hugetlb=1"  # GLIBC_TUNABLES: what the Makefile's precision stage runs with
SETTINGS = {"NCHW, glibc defaults": ("nchw", False, ""),
            "channels-last": ("channels_last", False, ""),
            "channels-last, freed memory kept": ("channels_last", True, ""),
            "channels-last, huge pages": ("channels_last", False, HUGE_PAGES)}


def keep_freed_memory() -> bool:
    """glibc's mmap and trimming off (mallopt), so that a freed block is reused rather than
    unmapped and faulted in again; True where the C library took the settings."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def time_batch(variant: str, batch: int, size: int, layout: str, keep: bool, repeats: int) -> float:
    """Median seconds of one eager batch (random init: speed does not depend on the weights)."""
    if keep:
        assert keep_freed_memory(), "glibc's mallopt is not available here"
    import torch

    from attnvgg_export import models

    model = models.create_model(variant, num_classes=1000).eval()
    x = torch.randn(batch, 3, size, size)
    if layout == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first batch warms up
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="se")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = [args.variant, args.batch, args.size]
    if args.child:
        layout, keep, _ = SETTINGS[args.child]
        print(time_batch(*shape, layout, keep, args.repeats))
        return
    print(f"eager fp32 {args.variant}, batch {args.batch} at {args.size}x{args.size}, median of "
          f"{args.repeats}, one process per setting")
    baseline = None
    for name in SETTINGS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.eager_settings", "--child", name,
                              "--variant", args.variant, "--batch", str(args.batch), "--size",
                              str(args.size), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "GLIBC_TUNABLES": SETTINGS[name][2]}).stdout
        seconds = float(out.split()[-1])
        baseline = baseline or seconds
        print(f"  {name:34s} {seconds * 1000:8.1f} ms  {baseline / seconds:.2f}x")


if __name__ == "__main__":
    main()
