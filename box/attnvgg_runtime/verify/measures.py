"""The measures: the only definitions of relative L2, cosine, top-k agreement, accuracy and the
export's relative max error. The gate, the layer fallback, `explain`, the export's check and
the benchmarks all call these (numpy only: a target box computes them without torch).

Over a batch of outputs (N, classes) against the reference's:
- ``rel_l2``: ||outputs - reference|| / ||reference||, over the whole batch (Frobenius);
- ``rel_l2_image``: the same per image, the worst over the images (one bad image cannot hide
  in the aggregate, nor a per-image scale error, which cosine does not see); an image whose
  logits are smaller than the median image's is measured against the median norm: a trained
  model's low-confidence images have small logits (a digit at 8.3 against a median of 62.9),
  and int8's absolute error floor over them would read as a large relative error (0.24 at
  cosine 0.995) that says nothing about the artifact;
- ``cosine``: the cosine similarity of each image's output with the reference's (an image with
  logits smaller than the median image's read at the median norm, as for ``rel_l2_image``), and in
  every JSON file the toolchain writes, "cosine" is the **lowest over the images**
  (docs/manifest.md);
- ``top1`` / ``top5``: the share of images whose top-1 class equals the reference's, and the mean
  overlap of the top-5 sets;
- ``accuracy``: the share of images whose top-1 class is the label;
- ``rel_max``: max |outputs - reference| / max |reference|, scale-free for near-flat logits
  (the export's fp32 check, where any difference is a bug, not rounding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from attnvgg_runtime.verify.accuracy import verdict_changes

TINY = 1e-30  # guards a division by a zero norm


class RelativeL2:
    """||a - e|| / ||e|| accumulated batch by batch, so that memory does not grow with images."""

    def __init__(self) -> None:
        self.squared_error = 0.0
        self.squared_norm = 0.0

    def add(self, outputs: np.ndarray, reference: np.ndarray) -> RelativeL2:
        a, e = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
        self.squared_error += float(np.sum((a - e) ** 2))
        self.squared_norm += float(np.sum(e ** 2))
        return self

    @property
    def value(self) -> float:
        return float(np.sqrt(self.squared_error) / max(np.sqrt(self.squared_norm), TINY))


def relative_l2(outputs: np.ndarray, reference: np.ndarray) -> float:
    return RelativeL2().add(outputs, reference).value


def relative_l2_per_image(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image, ||a - e|| over the larger of its own ||e|| and the median image's."""
    a = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    e = np.asarray(reference, np.float64).reshape(len(reference), -1)
    norms = np.linalg.norm(e, axis=1)
    return np.linalg.norm(a - e, axis=1) / np.maximum(np.maximum(norms, np.median(norms)), TINY)


def cosine_per_image(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image, the cosine of its logits with the reference's, with rel_l2_image's guard: an
    image whose reference logits are smaller than the median image's has its 1 - cosine scaled by
    (its norm / the median norm)^2, i.e. its error's angle read at the median norm (1 - cosine is
    |error across the reference|^2 / 2|reference|^2 for small errors). A trained model's
    low-confidence images, and every image at a size it was not trained at, have small logits:
    int8's absolute error floor turns them by an angle that says nothing about the artifact (a
    digit at twice its training size read 0.953 under the TensorRT graph, at rel L2 0.067)."""
    a = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    e = np.asarray(reference, np.float64).reshape(len(reference), -1)
    reference_norms = np.linalg.norm(e, axis=1)
    raw = (a * e).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * reference_norms, TINY)
    floor = np.maximum(np.maximum(reference_norms, np.median(reference_norms)), TINY)
    shrink = (reference_norms / floor) ** 2
    return 1 - (1 - raw) * shrink


def cosine(outputs: np.ndarray, reference: np.ndarray) -> float:
    """The lowest per-image cosine: what "cosine" means in every JSON file and budget."""
    return float(cosine_per_image(outputs, reference).min())


def top_k_agreement(outputs: np.ndarray, reference: np.ndarray, k: int) -> float:
    """k=1: the share of images whose top class is the reference's; k>1: the mean share of the
    reference's top-k classes that are in the output's top-k."""
    if k == 1:
        return float(np.mean(outputs.argmax(1) == reference.argmax(1)))
    k = min(k, reference.shape[1])
    top_a, top_e = np.argsort(-outputs, 1)[:, :k], np.argsort(-reference, 1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_e, strict=True)]))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(outputs).argmax(1) == labels))


def metrics(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Every measure the gate budgets, of one case (docs/manifest.md names the keys)."""
    a, e = np.asarray(outputs, np.float64), np.asarray(reference, np.float64)
    finite = bool(np.isfinite(a).all())
    result = {
        "finite": finite,
        "max_abs": float(np.abs(a - e).max()) if finite else float("inf"),
        "rel_l2": relative_l2(a, e) if finite else float("inf"),
        "rel_l2_image": float(relative_l2_per_image(a, e).max()) if finite else float("inf"),
        "cosine": cosine(a, e) if finite else 0.0,
        "top1": top_k_agreement(a, e, 1),
        "top5": top_k_agreement(a, e, 5),
        "images": len(a),
    }
    if labels is not None:
        result["accuracy"] = accuracy(a, labels)
        result["accuracy_eager"] = accuracy(e, labels)
        # right under eager and wrong here, and the reverse: what the drop's interval counts
        lost, gained = verdict_changes(a, e, labels)
        result["lost"], result["gained"] = int(lost.sum()), int(gained.sum())
    return result


@dataclass(frozen=True)
class Comparison:
    """The export's check of a graph against eager at one shape: rel_max within ``tolerance``."""
    shape: tuple[int, ...]
    max_abs: float
    rel_max: float
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
    max_abs = float(np.abs(output - reference).max()) if finite else float("inf")
    scale = max(float(np.abs(reference).max()), TINY)
    return Comparison(tuple(input_shape), max_abs, max_abs / scale,
                      cosine(output, reference) if finite else 0.0, finite, tolerance)
