"""How the accuracy verdict behaves at the sizes users have, computed exactly: every outcome of N
paired images (lost, gained) weighted by its probability under a known true drop, judged by the
project's own interval (attnvgg_runtime.verify.accuracy), not sampled. Rendered into
docs/precision.md ("What a number of labelled images can resolve"); the test
tests/verify/test_accuracy_statistics.py holds the claims and the block to this code.

    .venv/bin/python -m benchmarks.accuracy_statistics            # print the tables
    .venv/bin/python -m benchmarks.accuracy_statistics --write    # and render them into the docs

The model of a build: each image, independently, is lost by the artifact (eager right, the
artifact wrong) with probability gained_rate + drop, gained with probability gained_rate, and
unchanged otherwise; the drop is the difference of the two rates.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import binom

from attnvgg_runtime.verify.accuracy import drop_intervals, images_needed

DOC = Path(__file__).resolve().parents[1] / "docs" / "precision.md"
BUDGET = 0.01  # int8's accuracy_drop_max
IMAGES = (50, 100, 300, 1000, 3000)
GAINED_RATES = (0.0, 0.005, 0.02, 0.05)  # an int8 build on a trained model: 0.2-1% each way
OVER = (0.011, 0.015, 0.02, 0.03)  # true drops over the budget
UNDER = (0.0, 0.002, 0.005)  # and under it: the power to say "within budget"
TAIL = 1e-12  # outcomes less likely than this are left out (their total is reported)


def outcomes(images: int, gained_rate: float, drop: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (lost, gained) that N images can show, and its probability: lost ~ binomial(N,
    lost_rate), gained given lost ~ binomial(N - lost, gained_rate / (1 - lost_rate))."""
    lost_rate = gained_rate + drop
    lost = np.arange(images + 1)
    p_lost = binom.pmf(lost, images, lost_rate)
    cells = []
    for count, p in zip(lost[p_lost > TAIL], p_lost[p_lost > TAIL], strict=True):
        gained = np.arange(images - count + 1)
        p_gained = binom.pmf(gained, images - count, gained_rate / (1 - lost_rate))
        keep = p * p_gained > TAIL
        cells.append((np.full(keep.sum(), count), gained[keep], p * p_gained[keep]))
    return tuple(np.concatenate(c) for c in zip(*cells, strict=True))


Interval = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def characteristics(images: int, gained_rate: float, drop: float, budget: float = BUDGET,
                    interval: Interval = drop_intervals) -> dict:
    """P("within budget"), P("over budget") and the coverage of the true drop by the 95% interval,
    exactly, for builds whose true drop is ``drop``."""
    lost, gained, p = outcomes(images, gained_rate, drop)
    low, high = interval(lost, gained, images)
    total = p.sum()
    return {"images": images, "gained_rate": gained_rate, "drop": drop,
            "within": float(p[high <= budget + 1e-12].sum() / total),
            "over": float(p[low > budget + 1e-12].sum() / total),
            "coverage": float(p[(low <= drop) & (drop <= high)].sum() / total),
            "left_out": float(max(0.0, 1 - total))}


def conditional_interval(lost: np.ndarray, gained: np.ndarray, images: int) -> tuple[np.ndarray, np.ndarray]:
    """The interval this project used before issue 32: McNemar's exact (Clopper-Pearson) interval of
    lost among the discordant images, scaled by their share of N. It conditions on how many images
    changed verdict, as if that were known: with none it is [0, 0] at any N."""
    from scipy.stats import beta

    discordant = lost + gained
    safe = np.maximum(discordant, 1)
    low = np.where(lost > 0, beta.ppf(0.025, np.maximum(lost, 1), safe - lost + 1), 0.0)
    high = np.where(lost < discordant, beta.ppf(0.975, lost + 1, np.maximum(safe - lost, 1)), 1.0)
    scale = discordant / images
    return (np.where(discordant > 0, scale * (2 * low - 1), 0.0),
            np.where(discordant > 0, scale * (2 * high - 1), 0.0))


def grid(drops, interval: Interval = drop_intervals) -> list[dict]:
    return [characteristics(n, g, d, interval=interval) for n in IMAGES for g in GAINED_RATES for d in drops]


def render() -> str:
    over, under = grid(OVER), grid(UNDER)
    worst_false = max(over, key=lambda r: r["within"])
    worst_cover = min(over + under, key=lambda r: r["coverage"])
    old = max(grid(OVER, conditional_interval), key=lambda r: r["within"])
    lines = [f"Exact, over every outcome (`python -m benchmarks.accuracy_statistics`); budget "
             f"{100 * BUDGET:g} point; N = {', '.join(map(str, IMAGES))}; the artifact gaining "
             f"{', '.join(f'{100 * g:g}%' for g in GAINED_RATES)} of images each way besides the drop.",
             "",
             f"- A true drop over the budget ({', '.join(f'{100 * d:g}' for d in OVER)} points) "
             f"called \"within budget\": at most **{100 * worst_false['within']:.2f}%** of builds "
             f"(N = {worst_false['images']}, true drop {100 * worst_false['drop']:g} points, "
             f"{100 * worst_false['gained_rate']:g}% gained).",
             f"- The 95% interval covers the true drop in at least **{100 * worst_cover['coverage']:.1f}%** "
             f"of builds (N = {worst_cover['images']}, true drop {100 * worst_cover['drop']:g} points, "
             f"{100 * worst_cover['gained_rate']:g}% gained).",
             f"- The conditional interval used before (McNemar's, on the images that changed) "
             f"called a drop over the budget \"within budget\" for up to "
             f"**{100 * old['within']:.1f}%** of builds (N = {old['images']}, true drop "
             f"{100 * old['drop']:g} points, {100 * old['gained_rate']:g}% gained).",
             "", "Power: the share of builds called \"within budget\" when the true drop is under it "
             "(columns: true drop in points, share of images gained each way).", "",
             "| N | " + " | ".join(f"{100 * d:g} / {100 * g:g}%" for d in UNDER for g in GAINED_RATES) + " |",
             "|---|" + "---|" * (len(UNDER) * len(GAINED_RATES))]
    for n in IMAGES:
        row = {(r["drop"], r["gained_rate"]): r["within"] for r in under if r["images"] == n}
        lines.append(f"| {n} | " + " | ".join(f"{100 * row[d, g]:.1f}%" for d in UNDER for g in GAINED_RATES)
                     + " |")
    lines += ["", "Labelled images a budget needs: where every image keeps its verdict, and where "
              "1% of images change verdict each way (lost = gained: no drop), for the interval to "
              "lie wholly within the budget.", "", "| budget (points) | nothing changed | 1% each way |",
              "|---|---|---|"]
    for budget in (0.005, 0.01, 0.02):
        lines.append(f"| {100 * budget:g} | {images_needed(0, 0, 100, budget)} | "
                     f"{images_needed(1, 1, 100, budget)} |")
    return "\n".join(lines)


def write(text: str) -> None:
    doc = DOC.read_text()
    pattern = re.compile(r"(<!-- accuracy-statistics:begin -->\n)(?:.*?\n)?"
                         r"(<!-- accuracy-statistics:end -->)", re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC} has no <!-- accuracy-statistics:begin/end --> block")
    DOC.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"render the tables into {DOC.name}")
    text = render()
    if parser.parse_args().write:
        write(text)
    print(text)


if __name__ == "__main__":
    main()
