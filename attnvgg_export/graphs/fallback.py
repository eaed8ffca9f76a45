"""The layer fallback: quantize, and while the int8 graph misses its goal on the tuning images,
keep layers in float, one at a time, each only if it helps.

Two aims, in this order:
1. Where the tuning images have labels and the weights are trained: the top-1 drop against eager
   on them, held to the gate's ``accuracy_drop_max``, acted on only where its 95% interval
   (Tango's, attnvgg_runtime.verify.accuracy) puts it over budget (a drop of an image or two is
   what other kernels flip). Layers are ranked
   by their share of the drop (the drop with that layer alone in float, as NNCF's
   ``quantize_with_accuracy_control`` ranks them), and the fewest kept in float that bring it within budget.
2. The goal of ``FallbackGoal`` (default: the gate's rel-L2 budgets, with margin), layers ranked
   by the error each adds at its output (module by module, attnvgg_export.verify.explain).
The drop on the tuning images decides; the held-out images (and EVAL_DIR, in the gate) confirm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from attnvgg_export.graphs.quantize import Int8Target, onnx_to_int8, quantizable_nodes
from attnvgg_export.verify.cases import ShapeCase
from attnvgg_export.verify.explain import module_errors
from attnvgg_runtime.readers import run_batches
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.verify.accuracy import drop_verdict, verdict_changes
from attnvgg_runtime.verify.budgets import budget_margin
from attnvgg_runtime.verify.measures import cosine, metrics, top_k_agreement

FALLBACK_METRICS = ("margin", "top1", "cosine")


@dataclass
class FallbackReport:
    target: str
    metric: str
    goal: float
    initial: float
    final: float
    fallen_back: list[dict] = field(default_factory=list)
    met: bool = False
    worst_case: str = "tuning"  # the shape case the score was lowest at
    accuracy: dict | None = None  # the accuracy aim's record, where the tuning images have labels
    case_margins: dict[str, float] | None = None  # where the "margin" target was missed: per case

    def describe(self) -> str:
        at = "" if self.worst_case == "tuning" else f" (worst at {self.worst_case})"
        text = f"{self.metric} {self.final:.4f}{at} on the tuning images"
        if self.accuracy and not self.accuracy["met"]:
            text += (f", top-1 drop {100 * self.accuracy['final']['drop']:.2f} points past the "
                     f"budget {100 * self.accuracy['budget']:.2f} ({self.accuracy['verdict']} on "
                     f"{self.accuracy['images']} images)")
        return text

    def range_hint(self, opt: str) -> str | None:
        """Where the target was missed only at corners of the declared range: which shapes held
        and which did not (the declared range, not calibration, is then the setting to change);
        None where it was missed at the opt size too. ``opt``: the opt size, as HxW."""
        if not self.case_margins or self.case_margins.get("tuning", 0) < self.goal:
            return None
        held = [("the opt size " + opt) if c == "tuning" else c for c, m in self.case_margins.items()
                if m >= self.goal]
        missed = [f"{c} ({m:.2f})" for c, m in self.case_margins.items() if m < self.goal]
        return f"{self.target} held at {', '.join(held)}; not at {', '.join(missed)}"

    def to_json(self) -> dict:
        return self.__dict__


def layer_ranking(int8_path: Path, model_path: Path, eager_model, images: np.ndarray,
                  exact_int8: bool = False) -> list[dict]:
    """The quantized layers (Conv, Gemm) by the error each adds at its output, most first: the
    module-by-module measurement of `explain` (attnvgg_export.explain), one run on the tuning images."""
    nodes = {n.output[0]: n.name for n in onnx.load(str(model_path), load_external_data=False).graph.node
             if n.name in set(quantizable_nodes(model_path))}
    errors = [e for e in module_errors(int8_path, eager_model, images, exact_int8=exact_int8)
              if e.tensor in nodes]
    return [{"node": nodes[e.tensor], "module": e.module, "added": e.added}
            for e in sorted(errors, key=lambda e: e.added, reverse=True)]


@dataclass(frozen=True)
class FallbackGoal:
    """What the layer fallback aims at. "margin": the parity gate's budget for int8, met this many
    times over (``target``) on the tuning images at the opt size and at every corner shape the gate
    checks, so that the gate, on other images and other CPUs' kernels, has room to spare.
    "top1" / "cosine": top-1 agreement with eager, or the lowest per-image cosine (the gate's
    measures, attnvgg_runtime.verify.measures), on the tuning images at the opt size."""
    metric: str
    target: float
    cases: dict[str, ShapeCase]  # tuning images at the shapes the gate checks
    references: dict[str, np.ndarray]  # eager outputs for each case
    budget: dict[str, float]
    trained: bool
    # the gate's int8 accuracy_drop_max where the tuning images have labels and the weights are
    # trained: the fallback then aims first at the top-1 drop on them (its point estimate, as
    # NNCF's max_drop; the held-out images and EVAL_DIR judge it with its interval)
    accuracy_budget: float | None = None

    def top1_drop(self, runner) -> dict:
        """The paired top-1 drop against eager on the labelled tuning images."""
        case = self.cases["tuning"]
        lost, gained = (int(m.sum()) for m in verdict_changes(
            run_batches(runner, case.images), self.references["tuning"], case.labels))
        return {"drop": (lost - gained) / len(case.labels), "lost": lost, "gained": gained}

    def score(self, runner) -> tuple[float, str]:
        """(score, the case where it is lowest); higher is better."""
        if self.metric != "margin":
            outputs = run_batches(runner, self.cases["tuning"].images)
            agreement = (top_k_agreement(outputs, self.references["tuning"], 1)
                         if self.metric == "top1" else cosine(outputs, self.references["tuning"]))
            return agreement, "tuning"
        margins = self.margins(runner)
        worst = min(margins, key=margins.get)
        return margins[worst], worst

    def margins(self, runner) -> dict[str, float]:
        """The gate's int8 budget margin at each case ("tuning": the opt size; the corners by
        their shape)."""
        return {name: budget_margin(metrics(run_batches(runner, case.images, case.batch),
                                            self.references[name]), self.budget, self.trained)
                for name, case in self.cases.items()}


def _accuracy_shares(score_accuracy, initial: dict, nodes: list[str], ranking: list[dict]) -> list[dict]:
    """Each quantized layer's share of the top-1 drop: (drop - drop with it alone in float) /
    drop, most first; ties (common: one image is 1/len of the drop) go to the layer that adds
    the most error at its output."""
    added = {r["node"]: r for r in ranking}
    shares = []
    for node in tqdm(nodes, desc="share of the top-1 drop", unit="layer", leave=False):
        alone = score_accuracy([node])
        shares.append({"node": node, "module": added.get(node, {}).get("module", node),
                       "share": round((initial["drop"] - alone["drop"]) / initial["drop"], 4),
                       "drop_with_it_in_float": round(alone["drop"], 5),
                       "added": round(added.get(node, {}).get("added", 0.0), 5)})
    return sorted(shares, key=lambda s: (-s["share"], -s["added"]))


def _aim_at_accuracy(budget: float, images: int, score_accuracy, nodes: list[str], rank,
                     max_fallback: int, label: str, log) -> tuple[list[dict], dict]:
    """Layers in float, by share of the drop (most first; then by the error each adds), until
    the tuning drop is within ``budget``; a layer stays float only if it lowers the drop, and at
    most 3 * ``max_fallback`` are tried (a layer's share is measured alone: two layers may each
    flip no image alone and several together). Returns the layers kept and the record."""
    initial = score_accuracy([])
    verdict_initial = drop_verdict(initial["lost"], initial["gained"], images, budget)["verdict"]
    # acted on only where the tuning images resolve it: a drop of one or two images is what
    # another CPU's kernels flip, and the layers kept in float must not depend on the CPU
    acted = verdict_initial == "over budget" and max_fallback > 0
    record = {"budget": budget, "images": images, "initial": initial, "final": initial,
              "verdict_initial": verdict_initial, "acted": acted, "shares": []}
    kept: list[dict] = []
    if initial["drop"] > budget and not acted:
        log(f"  {label}: top-1 drop {100 * initial['drop']:.2f} points on {images} labelled tuning "
            f"images, past the budget {100 * budget:.2f} but {verdict_initial} with them: no layer "
            f"kept in float for it (the held-out images and EVAL_DIR judge it)")
    if acted:
        log(f"  {label}: top-1 drop {100 * initial['drop']:.2f} points on {images} labelled tuning "
            f"images > budget {100 * budget:.2f}; ranking {len(nodes)} layers by their share")
        record["shares"] = _accuracy_shares(score_accuracy, initial, nodes, rank())
        current = initial
        for layer in record["shares"][:3 * max_fallback]:
            if current["drop"] <= budget or len(kept) == max_fallback:
                break
            trial = score_accuracy([*(k["node"] for k in kept), layer["node"]])
            if trial["drop"] >= current["drop"]:
                continue
            current = trial
            kept.append({**layer, "drop_after": round(trial["drop"], 5), "aim": "accuracy"})
            log(f"  {label}: {layer['module']} kept in float (share {layer['share']:.2f}; top-1 "
                f"drop {100 * trial['drop']:.2f} points)")
        record["final"] = current
    final = record["final"]
    record["met"] = final["drop"] <= budget
    record["verdict"] = drop_verdict(final["lost"], final["gained"], images, budget)["verdict"]
    return kept, record


def quantize_with_fallback(model_path: Path, out_path: Path, ranges, target: Int8Target,
                           goal: FallbackGoal, eager_model, max_fallback: int = 6,
                           log=print) -> FallbackReport:
    """Quantize; where ``goal.accuracy_budget`` exists, keep in float the layers with the largest share
    of the top-1 drop until it is within budget; then, if the score on the tuning images is
    below the goal, rank the layers by the error each adds (one module-by-module measurement
    against ``eager_model``, on the images of the case that scored lowest) and keep them in
    float, most first, until the goal is met or ``max_fallback`` layers (of both aims) are float.
    Every int8 product is read exactly (the TensorRT graph with exact_int8; the CPU graph's 7-bit
    weights cannot saturate), so the decision is the same on every CPU, VNNI or not."""
    exact = bool(target.exact_int8_options)
    on_disk: list[str] | None = None  # the layers in float of the graph last written

    def write(excluded: list[str]) -> None:
        nonlocal on_disk
        if on_disk != excluded:  # quantizing full-size VGG16 takes seconds: once per choice
            onnx_to_int8(model_path, out_path, ranges, target, excluded)
            on_disk = list(excluded)

    def runner(excluded: list[str]) -> OnnxRuntimeRunner:
        write(excluded)
        return OnnxRuntimeRunner(out_path, exact_int8=exact, memory_arena=False)

    def score(excluded: list[str]) -> tuple[float, str]:
        return goal.score(runner(excluded))

    excluded: list[str] = []
    initial, worst = score(excluded)
    report = FallbackReport(target.value, goal.metric, goal.target, initial, initial, worst_case=worst)
    if goal.accuracy_budget is not None:
        def rank() -> list[dict]:
            write([])
            return layer_ranking(out_path, model_path, eager_model, goal.cases["tuning"].images,
                                 exact)

        report.fallen_back, report.accuracy = _aim_at_accuracy(
            goal.accuracy_budget, len(goal.cases["tuning"].labels),
            lambda nodes: goal.top1_drop(runner(nodes)), quantizable_nodes(model_path), rank,
            max_fallback, target.value, log)
        excluded = [layer["node"] for layer in report.fallen_back]
        if excluded:
            initial, worst = score(excluded)
    current = initial
    if current < goal.target and len(excluded) < max_fallback:
        # errors of several layers can cancel: a layer stays float only if that helps, and at
        # most 3 * max_fallback candidates are tried
        write(excluded)
        ranking = [r for r in layer_ranking(out_path, model_path, eager_model,
                                            goal.cases[worst].images, exact)
                   if r["node"] not in excluded][:3 * max_fallback]
        log(f"  {target.value}: {report.describe()} < {goal.target}; layers adding the most error: "
            f"{', '.join(r['module'] for r in ranking[:max_fallback])}")
        for layer in ranking:
            trial, trial_worst = score([*excluded, layer["node"]])
            if trial <= current:
                log(f"  {target.value}: {layer['module']} in float does not help ({goal.metric} "
                    f"{trial:.4f})")
                continue
            excluded.append(layer["node"])
            current, worst = trial, trial_worst
            report.fallen_back.append({**layer, "added": round(layer["added"], 5),
                                       f"{goal.metric}_after": round(current, 4), "aim": goal.metric})
            log(f"  {target.value}: {layer['module']} kept in float ({goal.metric} {current:.4f})")
            if current >= goal.target or len(excluded) == max_fallback:
                break
    write(excluded)  # the graph on disk: the best
    report.final, report.worst_case = current, worst
    # a drop past the budget on the tuning images fails the build only where it is past it with
    # confidence (one image of 96 is 1.04 points): held-out images and EVAL_DIR judge the rest
    report.met = current >= goal.target and (report.accuracy is None
                                             or report.accuracy["verdict"] != "over budget")
    if not report.met:
        if goal.metric == "margin":  # where it held and where not: the range may be the fix
            report.case_margins = {name: round(m, 4) for name, m in goal.margins(runner(excluded)).items()}
        log(f"  {target.value}: WARNING {report.describe()} (target: {goal.metric} >= "
            f"{goal.target}) with {len(excluded)} layers in float")
    elif report.accuracy and not report.accuracy["met"]:
        log(f"  {target.value}: {report.describe()}: the held-out images judge it")
    return report
