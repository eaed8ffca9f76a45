"""Stage: the verified fp32 graph -> fp16 graph, calibration, two int8 graphs with layer
fallback, and ONNX Runtime CPU models; every graph measured against eager PyTorch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from attnvgg_export.calibration.calibrate import DEFAULT_METHOD, calibrate, check_method
from attnvgg_export.calibration.data import (
    DEFAULT_COUNTS,
    NOISE,
    DataSplit,
    ImageSet,
    SplitCounts,
    check_fits_range,
    load_data_split,
    resize_images,
)
from attnvgg_export.calibration.preprocessing import Preprocessing
from attnvgg_export.convert.ort_format import onnx_to_ort
from attnvgg_export.graphs.describe import describe_onnx, onnx_with_frame_input
from attnvgg_export.graphs.export import peak_rss_mib
from attnvgg_export.graphs.fallback import (
    FALLBACK_METRICS,
    FallbackGoal,
    FallbackReport,
    quantize_with_fallback,
)
from attnvgg_export.graphs.fp16 import onnx_to_fp16
from attnvgg_export.graphs.quantize import Int8Target, QuantizationError
from attnvgg_export.manifest.lifecycle import forget_verdicts
from attnvgg_export.models import ConfigError, ToolchainError
from attnvgg_export.runtime.eager import model_from_manifest, run_torch
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_export.verify.cases import shape_cases
from attnvgg_export.verify.structure import activation_type
from attnvgg_runtime.manifest import (
    Artifact,
    Manifest,
    artifact_entry,
    declare_served_ranges,
    read_manifest,
    write_manifest,
)
from attnvgg_runtime.metadata import frame_input
from attnvgg_runtime.readers import release_memory, run_batches
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.verify.accuracy import drop_verdict
from attnvgg_runtime.verify.measures import accuracy, compare, metrics

log = logging.getLogger(__name__)

FP16_TOLERANCE = 1e-2  # relative max error of the fp16 graph against eager fp32
# the CPU int8 graph with a uint8 NHWC camera-frame input (attnvgg_export.graphs.describe)
FRAME_ONNX = "model.int8-cpu.frame.onnx"


class FallbackTargetError(ToolchainError):
    """An int8 graph missed its fallback target even with the most sensitive layers in float."""


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
    tolerances: Path | None = None  # the gate's budgets (default: attnvgg_export/verify/tolerances.toml)
    max_fallback: int = 6  # layers in float, of both aims together
    accuracy_aim: bool = True  # with labelled tuning images: aim at the top-1 drop first
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


def max_size_probe(eager_model, manifest: Manifest, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One input at the largest declared H x W, and eager's output for it: where fp16's sums are
    largest (check_fp16_at_max_size)."""
    dyn = manifest.dynamic
    shape = (1, 3, dyn["height"]["max"], dyn["width"]["max"])
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return x, run_torch(eager_model, x)


def check_fp16_at_max_size(fp16: Path, probe: tuple[np.ndarray, np.ndarray], log=print) -> None:
    """fp16 must stay finite and close where sums are largest: the largest declared H x W."""
    x, expected = probe
    c = compare(OnnxRuntimeRunner(fp16, memory_arena=False)(x), expected, x.shape, FP16_TOLERANCE)
    log(f"  fp16 at the largest declared size: {c.describe()}")
    if not c.passed:
        fp16.unlink(missing_ok=True)
        raise QuantizationError(f"the fp16 graph is not within tolerance at {c.describe()}")


def _fallback_goal(manifest: Manifest, tuning: ImageSet, eager_model,
                   config: PrecisionConfig) -> FallbackGoal:
    cases = shape_cases(manifest.dynamic, tuning, "tuning", noise=config.calib_source == NOISE,
                        seed=config.seed + 1)
    opt = cases["tuning"].images.shape[2:]
    # the max batch at the opt size repeats the tuning images at their size: measured once
    cases = ({n: c for n, c in cases.items() if c.gates("int8")
              and (n == "tuning" or c.images.shape[2:] != opt)} if config.metric == "margin"
             else {"tuning": cases["tuning"]})
    references = {name: run_batches(lambda x: run_torch(eager_model, x), case.images, case.batch)
                  for name, case in cases.items()}
    budget = load_tolerances(manifest.variant, config.tolerances)["int8"]
    target = config.margin_target if config.metric == "margin" else config.agreement_target
    trained = bool(manifest.model["checkpoint"])
    aimed = config.accuracy_aim and trained and tuning.labels is not None
    return FallbackGoal(config.metric, target, cases, references, budget, trained,
                        budget.get("accuracy_drop_max") if aimed else None)


def _load_data(manifest: Manifest, config: PrecisionConfig) -> tuple[DataSplit, list[ImageSet]]:
    """The three-way split at the opt size, and the calibration images: a share of them, if
    asked, resized to the largest declared size. Ranges depend on resolution: a tiny random-init
    graph calibrated only at 64x64 clipped at 448x448 (the parity gate caught it); but widening
    the ranges for 448 cost the digits fixture 2.3 points at its opt size, so it is opt-in
    (docs/precision.md)."""
    pre = Preprocessing.from_json(manifest.preprocessing)
    dyn = manifest.dynamic
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


@dataclass
class PrecisionGraphs:
    """What the precision stage made: the graphs' manifest entries, the calibration ranges and
    each int8 graph's layer-fallback report."""
    artifacts: dict[str, Artifact]
    ranges: object  # calibration.calibrate's CalibrationRanges
    fallback: dict[str, FallbackReport]


def build_precision_graphs(manifest_path: Path, config: PrecisionConfig, log=print) -> Path:
    """fp16, int8-trt, int8-cpu graphs and engines/ort models beside ``manifest_path``: the data
    split and eager's references, the graphs (make_graphs), their measure on the held-out images
    (measure_heldout), the manifest's record of both written once, then the verdict on the layer
    fallback (a missed target fails the stage, its graphs and record kept for inspection)."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    timings: dict[str, float] = {}
    start = stage_start = time.perf_counter()
    data, calibration = _load_data(manifest, config)
    for note in data.notes:
        log(f"data: {note}")
    log(f"data: {len(data.calibration)} calibration, {len(data.tuning)} tuning (layer fallback), "
        f"{len(data.heldout)} held-out images (parity), disjoint")
    eager_model = model_from_manifest(manifest)
    reference = run_batches(partial(run_torch, eager_model), data.heldout.images)
    goal = _fallback_goal(manifest, data.tuning, eager_model, config)
    probe = max_size_probe(eager_model, manifest, config.seed)
    # eager's weights are let go while the fp16 graph and the calibration run (the stage's
    # largest steps) and loaded again for the layer fallback, the last step that needs them
    del eager_model
    release_memory()  # and what eager's runs left on the heap (a gigabyte at full size)
    timings["data_and_eager"] = time.perf_counter() - start

    forget_verdicts(manifest_path, manifest, log)  # before any artifact is rewritten
    graphs = make_graphs(root, manifest, data, calibration, lambda: model_from_manifest(manifest),
                         probe, goal, config, timings, log)
    del goal  # eager's outputs on the held-out images are all that is left to use
    release_memory()
    start = time.perf_counter()
    parity = measure_heldout(root, graphs, data.heldout, reference, log)
    timings["heldout"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - stage_start  # from reading its data (imports not counted)
    record_precision(manifest, root, graphs, data, parity, timings)
    write_manifest(manifest_path, manifest)
    log("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; peak memory {peak_rss_mib():.0f} MiB")
    missed = [r for r in graphs.fallback.values() if not r.met]
    if missed:  # the graphs and the manifest stay for inspection; the build (and the gate) fail
        raise missed_target_error(missed, manifest, config)
    return manifest_path


def make_graphs(root: Path, manifest: Manifest, data: DataSplit, calibration: list[ImageSet],
                load_eager, probe: tuple[np.ndarray, np.ndarray], goal: FallbackGoal,
                config: PrecisionConfig, timings: dict, log) -> PrecisionGraphs:
    """The fp16 graph (checked at the largest declared size), the calibration ranges, both int8
    graphs with their layer fallback, and the ORT-format models."""
    fp32 = root / "model.onnx"
    start = time.perf_counter()
    fp16 = onnx_to_fp16(fp32, root / "model.fp16.onnx")
    check_fp16_at_max_size(fp16, probe, log)
    release_memory()  # each step's graphs and sessions given back before the next (full size: GBs)
    timings["fp16"] = time.perf_counter() - start

    start = time.perf_counter()
    ranges = calibrate(fp32, calibration, root / "calib", config.method)
    release_memory()
    timings["calibration"] = time.perf_counter() - start
    sizes = " + ".join(f"{len(c)} at {c.images.shape[2]}x{c.images.shape[3]}" for c in calibration)
    log(f"calibration: {ranges.method} on {sizes} images from {data.calibration.source}"
        f" ({'cached' if ranges.cached else f'{ranges.seconds:.1f} s'})")

    start = time.perf_counter()
    eager_model = load_eager()
    fallback = {target.value: quantize_with_fallback(fp32, root / target.filename, ranges, target, goal,
                                                     eager_model, config.max_fallback, log)
                for target in Int8Target}
    del eager_model
    release_memory()
    timings["quantize"] = time.perf_counter() - start

    start = time.perf_counter()
    trt, cpu = root / Int8Target.TENSORRT.filename, root / Int8Target.CPU.filename
    for graph in (fp16, trt, cpu):  # before the .ort files are made of them: they carry it on
        describe_onnx(graph, manifest)
    frame = onnx_with_frame_input(cpu, root / FRAME_ONNX, manifest.preprocessing)
    describe_onnx(frame, manifest, frame_input())
    timings["describe"] = time.perf_counter() - start

    start = time.perf_counter()
    ort_dir = root / "engines" / "ort"
    ort_fp32 = onnx_to_ort(fp32, ort_dir / "model.fp32.ort")
    ort_int8 = onnx_to_ort(root / Int8Target.CPU.filename, ort_dir / "model.int8-cpu.ort")
    release_memory()
    timings["ort_models"] = time.perf_counter() - start

    artifacts = {
        "fp32-onnx": artifact_entry(fp32, root, "onnx", "fp32", "any"),
        "fp16-onnx": artifact_entry(fp16, root, "onnx", "fp16", "tensorrt"),
        "int8-trt-onnx": artifact_entry(trt, root, "onnx", "int8", "tensorrt",
                                        exact_int8_options=Int8Target.TENSORRT.exact_int8_options,
                                        activations=activation_type(trt)),
        "int8-cpu-onnx": artifact_entry(cpu, root, "onnx", "int8", "onnxruntime-cpu",
                                        activations=activation_type(cpu)),
        "int8-cpu-frame-onnx": artifact_entry(frame, root, "onnx", "int8", "onnxruntime-cpu", source=cpu,
                                              activations=activation_type(cpu), frame=frame_input()),
        "fp32-ort": artifact_entry(ort_fp32, root, "ort", "fp32", "onnxruntime-cpu", source=fp32),
        "int8-cpu-ort": artifact_entry(ort_int8, root, "ort", "int8", "onnxruntime-cpu", source=cpu),
    }
    return PrecisionGraphs(artifacts, ranges, fallback)


def measure_heldout(root: Path, graphs: PrecisionGraphs, heldout: ImageSet, reference: np.ndarray,
                    log) -> dict:
    """The reduced-precision graphs measured on the held-out images once here: the figures the
    gate's drift check holds them to. (fp32 is verified at export; .ort files are their .onnx
    graphs optimized; the gate measures all of them.) Where the tuning images aimed the fallback
    at accuracy, the disjoint held-out images confirm its drop (recorded on the fallback report)."""
    labels, images = heldout.labels, heldout.images
    parity = {}
    if labels is not None:
        parity["eager-fp32"] = {"accuracy": accuracy(reference, labels), "images": len(images)}
    for name in ("fp16-onnx", "int8-trt-onnx", "int8-cpu-onnx"):
        path = root / graphs.artifacts[name].path
        outputs = run_batches(OnnxRuntimeRunner(path, exact_int8=name == "int8-trt-onnx", memory_arena=False),
                              images)
        release_memory()
        c = compare(outputs, reference, images.shape, FP16_TOLERANCE)
        m = metrics(outputs, reference, labels)
        parity[name] = {"path": path.relative_to(root).as_posix(), "rel_max": c.rel_max,
                        "rel_l2": m["rel_l2"], "cosine": m["cosine"], "finite": m["finite"],
                        "top1_agreement": m["top1"], "images": m["images"],
                        **({k: m[k] for k in ("accuracy", "lost", "gained")} if labels is not None
                           else {})}
        log(f"  {name}: cosine {m['cosine']:.5f}, rel max err {c.rel_max:.2e}, "
            f"top-1 agreement {m['top1']:.3f}")
        aimed = graphs.fallback.get(name.removesuffix("-onnx"))
        if aimed is not None and aimed.accuracy is not None:
            confirmed = drop_verdict(m["lost"], m["gained"], m["images"], aimed.accuracy["budget"])
            aimed.accuracy["confirmed"] = {"images": m["images"], "lost": m["lost"],
                                           "gained": m["gained"], **confirmed}
            log(f"  {name}: top-1 drop on the held-out images {100 * confirmed['drop']:+.2f} "
                f"points, 95% interval [{100 * confirmed['low']:+.2f}, {100 * confirmed['high']:+.2f}]"
                f": {confirmed['verdict']}")
    return parity


def record_precision(manifest: Manifest, root: Path, graphs: PrecisionGraphs, data: DataSplit,
                     parity: dict, timings: dict) -> None:
    """The stage's record in the manifest: its artifacts (int8's served sizes declared), the data
    split, the calibration and layer fallback, the held-out figures, its time and memory."""
    ranges = graphs.ranges
    manifest.artifacts = list(graphs.artifacts.values())
    declare_served_ranges(manifest)  # int8: the sizes its verdict covers
    manifest.data_split = data.record()
    manifest.calibration = {
        "source": data.calibration.source, "method": ranges.method, "images": ranges.count,
        "heldout_images": len(data.heldout), "ranges": ranges.ranges_path.relative_to(root).as_posix(),
        "cached": ranges.cached, "notes": list(data.notes),
        "fallback": {k: v.to_json() for k, v in graphs.fallback.items()},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "peak_rss_mib": round(peak_rss_mib()),
    }
    manifest.parity["heldout-vs-eager"] = parity


def missed_target_error(missed: list[FallbackReport], manifest: Manifest,
                        config: PrecisionConfig) -> FallbackTargetError:
    """What to change where the layer fallback missed its target: the declared range, where int8
    missed only at its edge (with the shapes where it held), else calibration and the fallback's
    own settings."""
    dynamic = manifest.dynamic
    opt = f"{dynamic['height']['opt']}x{dynamic['width']['opt']}"
    edges = [hint for r in missed if (hint := r.range_hint(opt))]
    declared = (f"H {dynamic['height']['min']}-{dynamic['height']['max']}, "
                f"W {dynamic['width']['min']}-{dynamic['width']['max']}")
    return FallbackTargetError(
        "; ".join(f"{r.target}: {r.describe()} (target: {r.metric} >= {r.goal}) with "
                  f"{len(r.fallen_back)} layers in float" for r in missed)
        + (f". int8 misses its budget only at the edge of the declared range ({declared}): "
           f"{'; '.join(edges)}. Declare the sizes the model serves (make HEIGHT_RANGE=MIN,OPT,MAX "
           f"WIDTH_RANGE=MIN,OPT,MAX, or export --height/--width), e.g. up to the largest side "
           f"where it held; or calibrate" if edges else ". Calibrate")
        + f" on more representative images (CALIB_DIR; --calib-largest-share "
          f"for graphs served far from their opt size), try another --method, allow more "
          f"layers in float (--max-fallback, now {config.max_fallback}), or lower "
          f"--{'margin' if config.metric == 'margin' else 'agreement'}-target")
