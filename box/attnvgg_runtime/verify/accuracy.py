"""Accuracy on labelled images, with the statistics the claim needs: per artifact top-1 and
top-5, the paired drop against eager fp32 on the same images with an exact 95% interval, how
many images changed verdict each way, and a verdict that says when the images cannot tell.

The interval is McNemar's, exact: of the N images, ``lost`` are right under eager and wrong
under the artifact, ``gained`` the reverse; the drop is (lost - gained) / N. Given the
n = lost + gained discordant images, lost is binomial(n, p), and the drop is n/N * (2p - 1);
a Clopper-Pearson interval for p gives the drop's (numpy and the standard library: a target box
computes it too). It needs no normal approximation, so it holds
for the few discordant images a good int8 build has (with none, the interval is [0, 0]: the
artifact agreed with eager on every image, and that is exact).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
Z = 1.959963984540054  # the normal quantile for a two-sided 95%, for the images-needed estimate


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

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        text = (f"top-1 {100 * self.top1:.2f}% (eager {100 * self.top1_eager:.2f}%), drop "
                f"{100 * self.drop:+.2f} points, 95% interval [{100 * self.low:+.2f}, "
                f"{100 * self.high:+.2f}] on {self.images} images ({self.lost} lost, "
                f"{self.gained} gained); budget {100 * self.budget:.2f} points: {self.verdict}")
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


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ binomial(n, p), summed in log space (n in the thousands is fine)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
             + (n - i) * log_q for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _solve(f, target: float) -> float:
    """p in [0, 1] where the decreasing f(p) crosses ``target``, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if f(middle) > target else (low, middle)
    return (low + high) / 2


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion."""
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else _solve(
        lambda p: -(1 - _binomial_cdf(successes - 1, trials, p)), -tail)
    high = 1.0 if successes == trials else _solve(
        lambda p: _binomial_cdf(successes, trials, p), tail)
    return low, high


def drop_interval(lost: int, gained: int, images: int,
                  confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact interval of the paired drop (lost - gained) / images (see the module's note)."""
    discordant = lost + gained
    if discordant == 0:
        return 0.0, 0.0
    low, high = clopper_pearson(lost, discordant, confidence)
    scale = discordant / images
    return scale * (2 * low - 1), scale * (2 * high - 1)


def images_needed(drop: float, discordance: float, budget: float) -> int | None:
    """About how many images, at the rates observed, would put the interval clear of the
    budget (normal approximation of the paired difference); None where the drop equals it."""
    gap = abs(drop - budget)
    if gap < 1e-12:
        return None
    variance = max(discordance - drop**2, 1e-12)
    return math.ceil(Z**2 * variance / gap**2)


def drop_verdict(lost: int, gained: int, images: int, budget: float) -> dict:
    """The one judgement of a paired drop against ``budget`` (accuracy_drop_max), for EVAL_DIR and
    the held-out images alike: within it with confidence, over it with confidence, or not
    resolvable with these images (with about how many would resolve it)."""
    low, high = drop_interval(lost, gained, images)
    drop = (lost - gained) / images
    needed = None
    if high <= budget + 1e-12:
        verdict = "within budget"
    elif low > budget + 1e-12:
        verdict = "over budget"
    else:
        verdict = "not resolvable"
        needed = images_needed(drop, (lost + gained) / images, budget)
    return {"drop": drop, "low": low, "high": high, "verdict": verdict, "images_needed": needed}


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
    lost, gained = (int(m.sum()) for m in verdict_changes(artifact_logits, eager_logits, labels))
    top1 = {name: float(top_k_correct(logits, labels, k).mean())
            for name, logits, k in (("top1", artifact_logits, 1), ("top5", artifact_logits, 5),
                                    ("top1_eager", eager_logits, 1), ("top5_eager", eager_logits, 5))}
    return AccuracyDrop(len(labels), **top1, lost=lost, gained=gained, budget=budget,
                        **drop_verdict(lost, gained, len(labels), budget))


def class_moves(artifact_logits: np.ndarray, eager_logits: np.ndarray,
                labels: np.ndarray) -> list[dict]:
    """Which classes move: per true class, the images eager got right and the artifact lost, and
    the reverse, where any did; most lost first."""
    labels = np.asarray(labels)
    lost_images, gained_images = verdict_changes(artifact_logits, eager_logits, labels)
    moves = []
    for label in np.unique(labels):
        mask = labels == label
        lost, gained = int((lost_images & mask).sum()), int((gained_images & mask).sum())
        if lost or gained:
            moves.append({"class": int(label), "images": int(mask.sum()), "lost": lost,
                          "gained": gained})
    return sorted(moves, key=lambda m: (-m["lost"], m["class"]))
