"""Stage: the verified fp32 graph -> fp16 graph, calibration, two int8 graphs with layer
fallback, and ONNX Runtime CPU models; every graph measured against eager PyTorch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from calibration.calibrate import DEFAULT_METHOD, calibrate, check_method
from calibration.data import (
    DEFAULT_COUNTS,
    NOISE,
    DataSplit,
    ImageSet,
    SplitCounts,
    check_fits_range,
    load_data_split,
    resize_images,
)
from calibration.preprocessing import Preprocessing
from models import ConfigError, ToolchainError

from .budgets import ShapeCase, budget_margin, load_tolerances, metrics, shape_cases
from .compare import compare
from .explain import module_errors
from .export import model_from_manifest, peak_rss_mib
from .fp16 import onnx_to_fp16
from .manifest import artifact_entry, read_manifest, write_manifest
from .ort_models import onnx_to_ort
from .quantize import Int8Target, QuantizationError, onnx_to_int8, quantizable_nodes
from .runners import OnnxRuntimeRunner, run_torch

log = logging.getLogger(__name__)

FP16_TOLERANCE = 1e-2  # relative max error of the fp16 graph against eager fp32


class FallbackTargetError(ToolchainError):
    """An int8 graph missed its fallback target even with the most sensitive layers in float."""


FALLBACK_METRICS = ("margin", "top1", "cosine")


@dataclass(frozen=True)
class PrecisionConfig:
    calib_source: str | None = None  # folder, .npy/.npz, None (bundled photos) or "noise"
    calib_count: int = DEFAULT_COUNTS.calibration
    tuning_count: int = DEFAULT_COUNTS.tuning  # the fallback chooses its layers on these
    heldout_count: int = DEFAULT_COUNTS.heldout  # the gate measures on these; nothing else sees them
    method: str = DEFAULT_METHOD
    metric: str = "margin"  # "margin" (the gate's budgets), or "top1" / "cosine" agreement
    margin_target: float = 1.2  # "margin": every budget 1.2 times the error, at every shape case
    agreement_target: float = 0.99  # "top1" / "cosine": agreement at the opt size
    tolerances: Path | None = None  # the gate's budgets (default: exporter/tolerances.toml)
    max_fallback: int = 6
    largest_share: float = 0.0  # share of the calibration images resized to the largest size
    seed: int = 0

    def __post_init__(self) -> None:
        check_method(self.method)
        if not 0 < self.agreement_target <= 1:
            raise ConfigError(f"agreement target {self.agreement_target} must be in (0, 1]")
        if self.margin_target <= 0:
            raise ConfigError(f"--margin-target {self.margin_target} must be > 0 (1.0: exactly "
                              f"at the gate's budgets)")
        if self.metric not in FALLBACK_METRICS:
            raise ConfigError(f"fallback metric {self.metric!r} must be one of {FALLBACK_METRICS}")
        if min(self.calib_count, self.tuning_count, self.heldout_count) < 1:
            raise ConfigError("calibration, tuning and held-out counts must be >= 1")
        if not 0 <= self.largest_share < 1:
            raise ConfigError(f"--calib-largest-share {self.largest_share} must be in [0, 1)")

    @property
    def counts(self) -> SplitCounts:
        return SplitCounts(self.calib_count, self.tuning_count, self.heldout_count)


def agreement(outputs: np.ndarray, reference: np.ndarray, metric: str) -> float:
    if metric == "top1":
        return float(np.mean(outputs.argmax(1) == reference.argmax(1)))
    a, b = outputs.astype(np.float64), reference.astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(cosine.mean())


def relative_l2(outputs: np.ndarray, reference: np.ndarray) -> float:
    a, e = outputs.astype(np.float64), reference.astype(np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def run_batches(runner, images: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([runner(images[i:i + batch]) for i in range(0, len(images), batch)])


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
    "top1" / "cosine": mean agreement with eager on the tuning images at the opt size."""
    metric: str
    target: float
    cases: dict[str, ShapeCase]  # tuning images at the shapes the gate checks
    references: dict[str, np.ndarray]  # eager outputs for each case
    budget: dict[str, float]
    trained: bool

    def score(self, runner) -> tuple[float, str]:
        """(score, the case where it is lowest); higher is better."""
        if self.metric != "margin":
            return agreement(run_batches(runner, self.cases["tuning"].images),
                             self.references["tuning"], self.metric), "tuning"
        margins = {name: budget_margin(metrics(run_batches(runner, case.images, case.batch),
                                               self.references[name]), self.budget, self.trained)
                   for name, case in self.cases.items()}
        worst = min(margins, key=margins.get)
        return margins[worst], worst


def quantize_with_fallback(model_path: Path, out_path: Path, ranges, target: Int8Target,
                           goal: FallbackGoal, eager_model, config: PrecisionConfig,
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
    if current < goal.target and config.max_fallback > 0:
        # errors of several layers can cancel: a layer stays float only if that helps, and at
        # most 3 * max_fallback candidates are tried
        ranking = layer_ranking(out_path, model_path, eager_model, goal.cases[worst].images,
                                exact)[:3 * config.max_fallback]
        log(f"  {target.value}: {report.describe()} < {goal.target}; layers adding the most error: "
            f"{', '.join(r['module'] for r in ranking[:config.max_fallback])}")
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
            if current >= goal.target or len(excluded) == config.max_fallback:
                break
        onnx_to_int8(model_path, out_path, ranges, target, excluded)  # the graph on disk: the best
    report.final, report.met, report.worst_case = current, current >= goal.target, worst
    if not report.met:
        log(f"  {target.value}: WARNING {report.describe()} is below the target {goal.target} "
            f"with {len(excluded)} layers in float")
    return report


def check_fp16_at_max_size(fp16: Path, eager_model, manifest: dict, seed: int, log=print) -> None:
    """fp16 must stay finite and close where sums are largest: the largest declared H x W."""
    dyn = manifest["dynamic"]
    shape = (1, 3, dyn["height"]["max"], dyn["width"]["max"])
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    c = compare(OnnxRuntimeRunner(fp16)(x), run_torch(eager_model, x), shape, FP16_TOLERANCE)
    log(f"  fp16 at the largest declared size: {c.describe()}")
    if not c.passed:
        fp16.unlink(missing_ok=True)
        raise QuantizationError(f"the fp16 graph is not within tolerance at {c.describe()}")


def _fallback_goal(manifest: dict, tuning: ImageSet, eager_model,
                   config: PrecisionConfig) -> FallbackGoal:
    cases = shape_cases(manifest["dynamic"], tuning, "tuning", noise=config.calib_source == NOISE,
                        seed=config.seed + 1)
    opt = cases["tuning"].images.shape[2:]
    # the max batch at the opt size repeats the tuning images at their size: measured once
    cases = ({n: c for n, c in cases.items() if c.gates("int8")
              and (n == "tuning" or c.images.shape[2:] != opt)} if config.metric == "margin"
             else {"tuning": cases["tuning"]})
    references = {name: run_batches(lambda x: run_torch(eager_model, x), case.images, case.batch)
                  for name, case in cases.items()}
    budget = load_tolerances(manifest["variant"], config.tolerances)["int8"]
    target = config.margin_target if config.metric == "margin" else config.agreement_target
    return FallbackGoal(config.metric, target, cases, references, budget,
                        trained=bool(manifest["model"]["checkpoint"]))


def _load_data(manifest: dict, config: PrecisionConfig) -> tuple[DataSplit, list[ImageSet]]:
    """The three-way split at the opt size, and the calibration images: a share of them, if
    asked, resized to the largest declared size. Ranges depend on resolution: a tiny random-init
    graph calibrated only at 64x64 clipped at 448x448 (the parity gate caught it); but widening
    the ranges for 448 cost the digits fixture 2.3 points at its opt size, so it is opt-in
    (docs/precision.md)."""
    pre = Preprocessing.from_json(manifest["preprocessing"])
    dyn = manifest["dynamic"]
    split = load_data_split(config.calib_source, pre, config.counts, config.seed)
    largest = (dyn["height"]["max"], dyn["width"]["max"])
    calibration = [split.calibration]
    at_largest = int(len(split.calibration) * config.largest_share)
    if at_largest and largest != tuple(pre.crop):
        images = split.calibration.images
        calibration = [ImageSet(images[at_largest:], None, split.calibration.source),
                       ImageSet(resize_images(images[:at_largest], *largest), None,
                                f"{split.calibration.source}, resized to {largest[0]}x{largest[1]}")]
    for images in (*calibration, split.tuning, split.heldout):
        check_fits_range(images.images, (dyn["height"]["min"], dyn["height"]["max"]),
                         (dyn["width"]["min"], dyn["width"]["max"]), images.source)
    return split, calibration


def build_precision_graphs(manifest_path: Path, config: PrecisionConfig, log=print) -> Path:
    """fp16, int8-trt, int8-cpu graphs and engines/ort models beside ``manifest_path``."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    fp32 = root / "model.onnx"
    timings: dict[str, float] = {}

    start = stage_start = time.perf_counter()
    data, calibration = _load_data(manifest, config)
    for note in data.notes:
        log(f"data: {note}")
    log(f"data: {len(data.calibration)} calibration, {len(data.tuning)} tuning (layer fallback), "
        f"{len(data.heldout)} held-out images (parity), disjoint")
    heldout = data.heldout.images
    eager_model = model_from_manifest(manifest)
    reference = run_batches(lambda x: run_torch(eager_model, x), heldout)
    goal = _fallback_goal(manifest, data.tuning, eager_model, config)
    timings["data_and_eager"] = time.perf_counter() - start

    start = time.perf_counter()
    fp16 = onnx_to_fp16(fp32, root / "model.fp16.onnx")
    check_fp16_at_max_size(fp16, eager_model, manifest, config.seed, log)
    timings["fp16"] = time.perf_counter() - start

    start = time.perf_counter()
    ranges = calibrate(fp32, calibration, root / "calib", config.method)
    timings["calibration"] = time.perf_counter() - start
    sizes = " + ".join(f"{len(c)} at {c.images.shape[2]}x{c.images.shape[3]}" for c in calibration)
    log(f"calibration: {ranges.method} on {sizes} images from {data.calibration.source}"
        f" ({'cached' if ranges.cached else f'{ranges.seconds:.1f} s'})")

    start = time.perf_counter()
    fallback = {}
    for target in Int8Target:
        fallback[target.value] = quantize_with_fallback(
            fp32, root / target.filename, ranges, target, goal, eager_model, config, log)
    timings["quantize"] = time.perf_counter() - start

    start = time.perf_counter()
    ort_dir = root / "engines" / "ort"
    ort_fp32 = onnx_to_ort(fp32, ort_dir / "model.fp32.ort")
    ort_int8 = onnx_to_ort(root / Int8Target.CPU.filename, ort_dir / "model.int8-cpu.ort")
    timings["ort_models"] = time.perf_counter() - start

    trt_exact = Int8Target.TENSORRT.exact_int8_options
    artifacts = {
        "fp32-onnx": (fp32, "onnx", "fp32", "any"),
        "fp16-onnx": (fp16, "onnx", "fp16", "tensorrt"),
        "int8-trt-onnx": (root / Int8Target.TENSORRT.filename, "onnx", "int8", "tensorrt", None,
                          trt_exact),
        "int8-cpu-onnx": (root / Int8Target.CPU.filename, "onnx", "int8", "onnxruntime-cpu"),
        "fp32-ort": (ort_fp32, "ort", "fp32", "onnxruntime-cpu"),
        "int8-cpu-ort": (ort_int8, "ort", "int8", "onnxruntime-cpu"),
    }
    start = time.perf_counter()
    labels = data.heldout.labels
    parity = {}
    if labels is not None:
        parity["eager-fp32"] = {"accuracy": float(np.mean(reference.argmax(1) == labels)),
                                "images": len(heldout)}
    # The reduced-precision graphs, measured on the held-out images once here: the figures the
    # gate's drift check holds them to. (fp32 is verified at export; .ort files are their .onnx
    # graphs optimized; the gate measures all of them.)
    for name in ("fp16-onnx", "int8-trt-onnx", "int8-cpu-onnx"):
        path = artifacts[name][0]
        outputs = run_batches(OnnxRuntimeRunner(path, exact_int8=name == "int8-trt-onnx"), heldout)
        c = compare(outputs, reference, heldout.shape, FP16_TOLERANCE)
        parity[name] = {"path": path.relative_to(root).as_posix(), "rel_max": c.rel_max,
                        "rel_l2": relative_l2(outputs, reference), "cosine": c.cosine, "finite": c.finite,
                        "top1_agreement": agreement(outputs, reference, "top1"),
                        "images": len(heldout)}
        if labels is not None:
            parity[name]["accuracy"] = float(np.mean(outputs.argmax(1) == labels))
        log(f"  {name}: cosine {c.cosine:.5f}, rel max err {c.rel_max:.2e}, "
            f"top-1 agreement {parity[name]['top1_agreement']:.3f}")

    timings["heldout"] = time.perf_counter() - start

    manifest["artifacts"] = [artifact_entry(p, root, *rest) for p, *rest in artifacts.values()]
    manifest["data_split"] = data.record()
    manifest["calibration"] = {
        "source": data.calibration.source, "method": ranges.method, "images": ranges.count,
        "heldout_images": len(heldout), "ranges": ranges.ranges_path.relative_to(root).as_posix(),
        "cached": ranges.cached, "notes": list(data.notes),
        "fallback": {k: v.to_json() for k, v in fallback.items()},
    }
    manifest["parity"]["heldout-vs-eager"] = parity
    # "total": the stage from reading its data to here (Python's start and imports not counted)
    timings["total"] = time.perf_counter() - stage_start
    manifest["calibration"]["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    manifest["calibration"]["peak_rss_mib"] = round(peak_rss_mib())
    write_manifest(manifest_path, manifest)
    log("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; peak memory {peak_rss_mib():.0f} MiB")
    missed = [r for r in fallback.values() if not r.met]
    if missed:  # the graphs and the manifest stay for inspection; the build (and the gate) fail
        raise FallbackTargetError(
            "; ".join(f"{r.target}: {r.describe()} is below the target {r.goal} with "
                      f"{len(r.fallen_back)} layers in float" for r in missed)
            + f". Calibrate on more representative images (CALIB_DIR; --calib-largest-share "
              f"for graphs served far from their opt size), try another --method, allow more "
              f"layers in float (--max-fallback, now {config.max_fallback}), or lower "
              f"--{'margin' if config.metric == 'margin' else 'agreement'}-target")
    return manifest_path
