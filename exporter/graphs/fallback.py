"""The layer fallback: quantize, and while the int8 graph misses its goal on the tuning images,
keep the layers that add the most error (measured module by module, exporter.verify.explain) in
float, one at a time, each only if it helps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from exporter.graphs.quantize import Int8Target, onnx_to_int8, quantizable_nodes
from exporter.runtime import run_batches
from exporter.runtime.onnxruntime import OnnxRuntimeRunner
from exporter.verify.budgets import budget_margin
from exporter.verify.cases import ShapeCase
from exporter.verify.explain import module_errors
from exporter.verify.measures import cosine, metrics, top_k_agreement

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

    def describe(self) -> str:
        at = "" if self.worst_case == "tuning" else f" (worst at {self.worst_case})"
        return f"{self.metric} {self.final:.4f}{at} on the tuning images"

    def to_json(self) -> dict:
        return self.__dict__


def layer_ranking(int8_path: Path, model_path: Path, eager_model, images: np.ndarray,
                  exact_int8: bool = False) -> list[dict]:
    """The quantized layers (Conv, Gemm) by the error each adds at its output, most first: the
    module-by-module measurement of `explain` (exporter.explain), one run on the tuning images."""
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
    measures, exporter.verify.measures), on the tuning images at the opt size."""
    metric: str
    target: float
    cases: dict[str, ShapeCase]  # tuning images at the shapes the gate checks
    references: dict[str, np.ndarray]  # eager outputs for each case
    budget: dict[str, float]
    trained: bool

    def score(self, runner) -> tuple[float, str]:
        """(score, the case where it is lowest); higher is better."""
        if self.metric != "margin":
            outputs = run_batches(runner, self.cases["tuning"].images)
            agreement = (top_k_agreement(outputs, self.references["tuning"], 1)
                         if self.metric == "top1" else cosine(outputs, self.references["tuning"]))
            return agreement, "tuning"
        margins = {name: budget_margin(metrics(run_batches(runner, case.images, case.batch),
                                               self.references[name]), self.budget, self.trained)
                   for name, case in self.cases.items()}
        worst = min(margins, key=margins.get)
        return margins[worst], worst


def quantize_with_fallback(model_path: Path, out_path: Path, ranges, target: Int8Target,
                           goal: FallbackGoal, eager_model, max_fallback: int = 6,
                           log=print) -> FallbackReport:
    """Quantize; if the score on the tuning images is below the goal, rank the layers by the
    error each adds (one module-by-module measurement against ``eager_model``, on the images of
    the case that scored lowest) and keep them in float, most first, until the goal is met or
    ``max_fallback`` layers are float. Every int8 product is read exactly (the TensorRT graph
    with exact_int8; the CPU graph's 7-bit weights cannot saturate), so the decision is the same
    on every CPU, VNNI or not."""
    exact = bool(target.exact_int8_options)

    def score(excluded: list[str]) -> tuple[float, str]:
        onnx_to_int8(model_path, out_path, ranges, target, excluded)
        return goal.score(OnnxRuntimeRunner(out_path, exact_int8=exact))

    excluded: list[str] = []
    initial, worst = score(excluded)
    current = initial
    report = FallbackReport(target.value, goal.metric, goal.target, initial, initial, worst_case=worst)
    if current < goal.target and max_fallback > 0:
        # errors of several layers can cancel: a layer stays float only if that helps, and at
        # most 3 * max_fallback candidates are tried
        ranking = layer_ranking(out_path, model_path, eager_model, goal.cases[worst].images,
                                exact)[:3 * max_fallback]
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
                                       f"{goal.metric}_after": round(current, 4)})
            log(f"  {target.value}: {layer['module']} kept in float ({goal.metric} {current:.4f})")
            if current >= goal.target or len(excluded) == max_fallback:
                break
        onnx_to_int8(model_path, out_path, ranges, target, excluded)  # the graph on disk: the best
    report.final, report.met, report.worst_case = current, current >= goal.target, worst
    if not report.met:
        log(f"  {target.value}: WARNING {report.describe()} is below the target {goal.target} "
            f"with {len(excluded)} layers in float")
    return report
