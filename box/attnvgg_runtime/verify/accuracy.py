"""Accuracy on labelled images, with the statistics the claim needs: per artifact top-1 and
top-5, the paired drop against eager fp32 on the same images with a 95% interval, how many
images changed verdict each way, and a verdict that says when the images cannot tell.

Of the N images, ``lost`` are right under eager and wrong under the artifact, ``gained`` the
reverse; the drop is (lost - gained) / N, a difference of two paired proportions. Its interval is
Tango's asymptotic score interval (T. Tango, "Equivalence test and confidence interval for the
difference in proportions for the paired-sample design", Statistics in Medicine 17:891-908,
1998): the drops d whose score statistic, with the discordant rate re-estimated under d by
maximum likelihood, is within the normal quantile. It needs only (lost, gained, N) and, unlike
an interval conditioned on the discordant count (McNemar's exact test read as an interval),
it knows that N images bound what they can show: with none changed of 100 it still allows a
drop of up to 3.7 points. Its behaviour at the sizes users have (50 to 3,000 images) is
simulated by tests/verify/test_accuracy_statistics.py: where the true drop is over budget,
"within budget" at most 5% of builds; the interval covers the true drop at least 92% of the time.
numpy and the standard library only: a target box computes it too.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
Z = 1.959963984540054  # the normal quantile for a two-sided 95%
METHOD = "Tango score interval (Statistics in Medicine, 1998)"


@dataclass(frozen=True)
class AccuracyDrop:
    images: int
    top1: float
    top5: float
    top1_eager: float
    top5_eager: float
    lost: int  # right under eager, wrong under the artifact
    gained: int  # wrong under eager, right under the artifact
    drop: float  # top1_eager - top1
    low: float  # the drop's 95% interval
    high: float
    budget: float
    verdict: str  # "within budget", "over budget" or "not resolvable"
    images_needed: int | None = None  # where not resolvable: about how many would resolve it
    fails: bool = False  # drop_verdict's rule: over with confidence, or by a resolvable estimate
    warning: str | None = None  # not resolvable and not failed: said, never a plain pass
    method: str = METHOD

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        text = (f"top-1 {100 * self.top1:.2f}% (eager {100 * self.top1_eager:.2f}%), drop "
                f"{100 * self.drop:+.2f} points, 95% interval [{100 * self.low:+.2f}, "
                f"{100 * self.high:+.2f}] on {self.images} images ({self.lost} lost, "
                f"{self.gained} gained); budget {100 * self.budget:.2f} points: {self.verdict}")
        if self.budget <= 0:
            text += (" (a zero budget allows no image to change verdict)" if self.lost or self.gained
                     else " (no image changed verdict)")
        if self.verdict == "not resolvable":
            text += (f" with {self.images} images" + (
                f"; about {self.images_needed} would resolve it" if self.images_needed
                else "; the drop sits on the budget, no number of images resolves it"))
        return text


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image, whether the label is among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    if k == 1:  # argmax, as measures.accuracy counts it (ties go to the first class)
        return np.asarray(logits).argmax(1) == np.asarray(labels)
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == np.asarray(labels)[:, None]).any(axis=1)


def _tango_score(delta: np.ndarray, lost: np.ndarray, gained: np.ndarray, images) -> np.ndarray:
    """Tango's score statistic for a true drop ``delta``: (lost - gained - N delta) over its
    standard error, with the gained rate estimated under ``delta`` by maximum likelihood (the
    root of A p^2 + B p + C, in the form that does not cancel)."""
    a = 2 * images
    b = -lost - gained + (2 * images - lost + gained) * delta
    c = -gained * delta * (1 - delta)
    root = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        p_gained = np.where(b <= 0, (root - b) / (2 * a), -2 * c / (root + b))
        variance = images * (2 * p_gained + delta * (1 - delta))
        numerator = lost - gained - images * delta
        score = numerator / np.sqrt(variance)
        return np.where(variance > 0, score, np.where(numerator == 0, 0.0, np.sign(numerator) * np.inf))


def drop_intervals(lost, gained, images, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Tango's score interval of the paired drop (lost - gained) / images (the module's note),
    for arrays of counts at once: the drops whose score is within the normal quantile, found by
    bisection (the score decreases with the drop)."""
    lost, gained = np.asarray(lost, np.float64), np.asarray(gained, np.float64)
    if np.any(np.asarray(images) <= 0):
        raise ValueError(f"an accuracy drop needs images; got {images}")
    z = _normal_quantile(1 - (1 - confidence) / 2)
    estimate = (lost - gained) / images
    ends = []
    for target, low, high in ((z, -1.0, estimate), (-z, estimate, 1.0)):
        low, high = np.broadcast_to(low, estimate.shape).copy(), np.broadcast_to(high, estimate.shape).copy()
        for _ in range(64):
            middle = (low + high) / 2
            above = _tango_score(middle, lost, gained, images) > target
            low, high = np.where(above, middle, low), np.where(above, high, middle)
        ends.append((low + high) / 2)
    low = np.where(estimate <= -1, -1.0, ends[0])
    return low, np.where(estimate >= 1, 1.0, ends[1])


@functools.lru_cache(maxsize=65536)
def drop_interval(lost: float, gained: float, images: float,
                  confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The interval of one drop (drop_intervals)."""
    low, high = drop_intervals(lost, gained, images, confidence)
    return float(low), float(high)


def _normal_quantile(p: float) -> float:
    return Z if abs(p - 0.975) < 1e-12 else statistics.NormalDist().inv_cdf(p)


def images_needed(lost: int, gained: int, images: int, budget: float) -> int | None:
    """About how many images, at the rates of change observed here, would put the interval
    clear of ``budget`` (on either side); None where the drop equals the budget, which no number
    of images resolves. With nothing changed it is how many unchanged images a budget needs
    (381 for one point)."""
    drop = (lost - gained) / images
    if abs(drop - budget) < 1e-12:
        return None

    def resolves(n: float) -> bool:
        low, high = drop_interval(lost * n / images, gained * n / images, n)
        return high <= budget + 1e-12 or low > budget + 1e-12

    high = float(images)
    while not resolves(high):
        high *= 2
        if high > 1e9:
            return None
    low = high / 2
    while high - low > 0.5:
        middle = (low + high) / 2
        low, high = (middle, high) if not resolves(middle) else (low, middle)
    return math.ceil(high)


def drop_verdict(lost: int, gained: int, images: int, budget: float) -> dict:
    """The one judgement of a paired drop against ``budget`` (accuracy_drop_max), for EVAL_DIR,
    the held-out images, the layer fallback's tuning images and the target box alike.

    ``verdict``: "within budget" or "over budget" where the 95% interval lies wholly on one side,
    else "not resolvable" (with ``images_needed``). A zero budget (fp32) makes no statistical
    claim: it is "within budget" where no image changed verdict, else "over budget".
    ``fails``: over budget with confidence, or by its point estimate where these images can
    resolve one (one image is at most the budget: 1/N <= budget; a single image of 64 is 1.56
    points and says nothing of a 1-point budget); a "not resolvable" that does not fail is a
    warning (``warning``), never a pass."""
    low, high = drop_interval(lost, gained, images)
    drop = (lost - gained) / images
    needed, warning = None, None
    if budget <= 0:
        verdict = "within budget" if lost == gained == 0 else "over budget"
    elif high <= budget + 1e-12:
        verdict = "within budget"
    elif low > budget + 1e-12:
        verdict = "over budget"
    else:
        verdict = "not resolvable"
        needed = images_needed(lost, gained, images, budget)
    point_over = drop > budget + 1e-12 and 1 / images <= budget + 1e-12
    fails = verdict == "over budget" or point_over
    if verdict == "not resolvable" and not fails:
        warning = (f"top-1 drop not resolvable on {images} images: {100 * drop:+.2f} points, 95% "
                   f"interval [{100 * low:+.2f}, {100 * high:+.2f}] across the budget "
                   f"{100 * budget:.2f}" + (f"; about {needed} labelled images would resolve it "
                                            f"(EVAL_DIR)" if needed else ""))
    return {"drop": drop, "low": low, "high": high, "verdict": verdict, "images_needed": needed,
            "fails": fails, "warning": warning, "method": METHOD}


def verdict_changes(artifact_logits: np.ndarray, eager_logits: np.ndarray,
                    labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: lost (eager right, the artifact wrong) and gained (the reverse)."""
    ours, theirs = top_k_correct(artifact_logits, labels, 1), top_k_correct(eager_logits, labels, 1)
    return theirs & ~ours, ours & ~theirs


def judge_drop(artifact_logits: np.ndarray, eager_logits: np.ndarray, labels: np.ndarray,
               budget: float) -> AccuracyDrop:
    """The paired drop of one artifact against eager on the same labelled images, judged by
    ``drop_verdict``."""
    labels = np.asarray(labels)
    return judge_correct(top_k_correct(artifact_logits, labels, 1), top_k_correct(artifact_logits, labels, 5),
                         top_k_correct(eager_logits, labels, 1), top_k_correct(eager_logits, labels, 5),
                         budget)


def judge_correct(top1: np.ndarray, top5: np.ndarray, top1_eager: np.ndarray, top5_eager: np.ndarray,
                  budget: float) -> AccuracyDrop:
    """``judge_drop`` from per-image correctness (top-1 and top-5, the artifact's and eager's on
    the same images): what a stored per-image result keeps (attnvgg_export.verify.results)."""
    top1, top1_eager = np.asarray(top1, bool), np.asarray(top1_eager, bool)
    lost, gained = int((top1_eager & ~top1).sum()), int((top1 & ~top1_eager).sum())
    rates = {name: float(np.asarray(correct, bool).mean()) for name, correct in
             (("top1", top1), ("top5", top5), ("top1_eager", top1_eager), ("top5_eager", top5_eager))}
    return AccuracyDrop(len(top1), **rates, lost=lost, gained=gained, budget=budget,
                        **drop_verdict(lost, gained, len(top1), budget))


def class_moves(artifact_logits: np.ndarray, eager_logits: np.ndarray,
                labels: np.ndarray) -> list[dict]:
    """Which classes move: per true class, the images eager got right and the artifact lost, and
    the reverse, where any did; most lost first."""
    labels = np.asarray(labels)
    return moves_of(top_k_correct(artifact_logits, labels, 1), top_k_correct(eager_logits, labels, 1), labels)


def moves_of(top1: np.ndarray, top1_eager: np.ndarray, labels: np.ndarray) -> list[dict]:
    """``class_moves`` from per-image top-1 correctness."""
    top1, top1_eager, labels = np.asarray(top1, bool), np.asarray(top1_eager, bool), np.asarray(labels)
    lost_images, gained_images = top1_eager & ~top1, top1 & ~top1_eager
    moves = []
    for label in np.unique(labels):
        mask = labels == label
        lost, gained = int((lost_images & mask).sum()), int((gained_images & mask).sum())
        if lost or gained:
            moves.append({"class": int(label), "images": int(mask.sum()), "lost": lost,
                          "gained": gained})
    return sorted(moves, key=lambda m: (-m["lost"], m["class"]))
