"""Comparing outputs is separate from producing them (Polygraphy's Comparator split)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    shape: tuple[int, ...]
    max_abs: float
    rel_max: float  # max |a - b| / max |reference|: scale-free, meaningful for near-flat logits
    cosine: float
    finite: bool
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.finite and self.rel_max <= self.tolerance

    def to_json(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "passed": self.passed}

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return (f"{'x'.join(map(str, self.shape))}: rel max err {self.rel_max:.2e} "
                f"(tolerance {self.tolerance:.0e}), max abs {self.max_abs:.2e}, "
                f"cosine {self.cosine:.6f} {verdict}")


def compare(output: np.ndarray, reference: np.ndarray, input_shape: tuple[int, ...],
            tolerance: float) -> Comparison:
    output = np.asarray(output, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    finite = bool(np.isfinite(output).all())
    if output.shape != reference.shape:
        return Comparison(tuple(input_shape), float("inf"), float("inf"), 0.0, finite, tolerance)
    diff = np.abs(output - reference)
    max_abs = float(diff.max()) if finite else float("inf")
    scale = max(float(np.abs(reference).max()), 1e-30)
    a, b = output.ravel(), reference.ravel()
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)) if finite else 0.0
    return Comparison(tuple(input_shape), max_abs, max_abs / scale, cosine, finite, tolerance)
