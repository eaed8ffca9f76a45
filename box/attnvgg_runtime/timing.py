"""Latency percentiles of a callable: warm up, then time it for a while (at least a few runs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 2
    min_iterations: int = 5
    seconds_per_case: float = 10.0
    torch_compile: bool = True
    first_result: bool = True  # each CPU artifact's cold start (attnvgg_runtime.first_result)


def latency(fn: Callable[[], object], config: BenchConfig) -> dict:
    for _ in range(config.warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + config.seconds_per_case
    while len(samples) < config.min_iterations or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if len(samples) >= 200:
            break
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "iterations": len(samples)}
