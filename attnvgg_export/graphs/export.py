"""Stage 1: PyTorch -> ONNX (fp32, dynamic batch/H/W), verified at several shapes, simplified.

The dynamo exporter traces one example input; the declared ranges become symbolic dims. The
graph is then run with ONNX Runtime against eager PyTorch at shapes across the declared range,
because a graph that accepts a shape is not proof that it computes the right answer there.
"""

from __future__ import annotations

import collections
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from attnvgg_export import models
from attnvgg_export.calibration.preprocessing import Preprocessing
from attnvgg_export.console import quiet
from attnvgg_export.graphs.describe import describe_onnx
from attnvgg_export.graphs.module_map import copy_keeping_module_map, module_outputs, strip_trace_metadata
from attnvgg_export.manifest.lifecycle import invalidate_verdicts
from attnvgg_export.models import ConfigError, ToolchainError
from attnvgg_export.models.layers import DEFAULT_ATTENTION_BUDGET_BYTES, attention_map_bytes
from attnvgg_export.runtime.eager import eager_model, run_torch
from attnvgg_export.verify.cases import declared_corners
from attnvgg_runtime.files import atomic_path, ensure_writable_dir
from attnvgg_runtime.manifest import (
    Manifest,
    artifact_entry,
    sha256_file,
    tool_versions,
    write_manifest,
)
from attnvgg_runtime.readers import release_memory
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.verify.measures import Comparison, compare

# The dynamo exporter emits opset >= 18; ONNX Runtime 1.2x-1.3x and TensorRT 11's parser read
# these. 18 is the default: the oldest of them, so the widest set of runtimes loads the graph.
SUPPORTED_OPSETS = (18, 19, 20, 21)
DEFAULT_OPSET = 18
EXPORT_TOLERANCE = 1e-4  # fp32 graph vs eager: relative max error
INPUT_NAME, OUTPUT_NAME = "input", "logits"
SA_DEFAULT_BATCH, SA_DEFAULT_SIDE = 8, 96  # sa's defaults fit the default 4 GiB budget


class ExportError(ToolchainError):
    """torch.onnx could not export the model."""


class VerificationError(ToolchainError):
    """An exported graph computes something other than the PyTorch model at some shape."""


@dataclass(frozen=True)
class AxisRange:
    """min <= opt <= max of one dynamic axis; opt is what TensorRT tunes for."""

    min: int
    opt: int
    max: int
    name: str = "axis"
    multiple_of: int = 1

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        setting = {"batch": "BATCH_RANGE / --batch", "height": "HEIGHT_RANGE / --height",
                   "width": "WIDTH_RANGE / --width"}.get(self.name, self.name)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            allowed, example = (("multiples of 32, at least 32", "32,224,448") if self.multiple_of > 1
                                else ("at least 1", "1,1,32"))
            raise ConfigError(f"{self.name} range {values} ({setting}) must be MIN,OPT,MAX whole "
                              f"numbers, {allowed} (e.g. {example})")
        if not self.min <= self.opt <= self.max:
            raise ConfigError(f"{self.name} range must satisfy min <= opt <= max, got "
                              f"min={self.min} opt={self.opt} max={self.max}")
        for v in values:
            if v % self.multiple_of or v < self.multiple_of:
                raise ConfigError(
                    f"{self.name} range value {v} is not servable: every variant needs {self.name} "
                    f"to be a multiple of {self.multiple_of} and >= {self.multiple_of} (five 2x2 pools)")

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    def to_json(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max,
                **({"multiple_of": self.multiple_of} if self.multiple_of > 1 else {})}


def default_sides(opt: int) -> tuple[int, int, int]:
    """The declared sides where none are given: from 32 (or the opt size, if smaller) to twice the
    opt size, the model's training size. 224 keeps 32..448; a model trained at 32 is not held to
    int8's budget at 448, 14 times the size it saw (as Ultralytics' TensorRT export declares its
    largest shape at the training size)."""
    return min(32, opt), opt, 2 * opt


def batch_range(lo: int = 1, opt: int = 1, hi: int = 32) -> AxisRange:
    return AxisRange(lo, opt, hi, "batch")


def image_range(name: str, lo: int = 32, opt: int = 224, hi: int = 448) -> AxisRange:
    return AxisRange(lo, opt, hi, name, multiple_of=32)


@dataclass(frozen=True)
class ExportConfig:
    variant: str
    num_classes: int = 1000
    model_width: float = 1.0
    checkpoint: Path | None = None
    reset_head: bool = False
    opset: int = DEFAULT_OPSET
    batch: AxisRange | None = None  # None: the variant's default
    height: AxisRange | None = None
    width: AxisRange | None = None
    attention_memory_budget: int = DEFAULT_ATTENTION_BUDGET_BYTES
    simplify: bool = True
    seed: int = 0
    tolerance: float = EXPORT_TOLERANCE
    labels: tuple[str, ...] | None = None  # class names, one per class, for runtimes

    def __post_init__(self) -> None:
        models.check_variant(self.variant)
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ConfigError(f"{len(self.labels)} labels given for {self.num_classes} classes; "
                              f"the labels file needs one line per class")
        if self.opset not in SUPPORTED_OPSETS:
            raise ConfigError(f"opset {self.opset} is not supported; use one of "
                              f"{', '.join(map(str, SUPPORTED_OPSETS))} (default {DEFAULT_OPSET})")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise ConfigError(f"checkpoint {self.checkpoint} does not exist; pass the path of a "
                              f".pt, .pth or .safetensors file, or none for the seeded default")
        sa = self.variant == "sa"
        defaults = {
            "batch": batch_range(1, 1, SA_DEFAULT_BATCH if sa else 32),
            "height": image_range("height", 32, SA_DEFAULT_SIDE if sa else 224,
                                  SA_DEFAULT_SIDE if sa else 448),
        }
        defaults["width"] = replace(defaults["height"], name="width")
        for axis, default in defaults.items():
            if getattr(self, axis) is None:
                object.__setattr__(self, axis, default)
        if sa:
            needed = attention_map_bytes(self.batch.max, self.height.max, self.width.max)
            if needed > self.attention_memory_budget:
                raise ConfigError(
                    f"'sa' cannot serve batch {self.batch.max} at {self.height.max}x"
                    f"{self.width.max}: its attention map needs {needed / 2**30:.1f} GiB, over "
                    f"the budget of {self.attention_memory_budget / 2**30:.1f} GiB; lower the "
                    f"max batch or size, or raise the budget (--attention-budget-gib)")

    def model_kwargs(self) -> dict:
        kwargs = {"width": self.model_width}
        if self.variant == "sa":
            kwargs["attention_memory_budget"] = self.attention_memory_budget
        return kwargs


@dataclass
class ExportReport:
    onnx_path: Path
    weights: str
    simplified: bool
    simplify_note: str
    op_counts: dict[str, dict[str, int]]
    checks: list[Comparison]
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read labels file {path}: {e.strerror}") from None
    return tuple(line.strip() for line in lines if line.strip())


def build_model(config: ExportConfig) -> tuple[nn.Module, str]:
    """The eval-mode model and a line saying where its weights came from."""
    return eager_model(config.variant, config.num_classes, config.model_width, config.seed,
                       config.checkpoint, config.reset_head, config.attention_memory_budget)


def verification_shapes(config: ExportConfig) -> list[tuple[int, int, int, int]]:
    """>= 4 shapes across the declared range: the opt point, the declared corners (the gate's,
    attnvgg_export.verify.cases) and an in-between one that is neither 224 nor a corner, non-square."""
    b, h, w = config.batch, config.height, config.width
    mid_h = h.min + (h.max - h.min) // 96 * 32  # a third of the way up
    mid_w = w.max - (w.max - w.min) // 96 * 32  # a third of the way down
    dynamic = {"batch": b.to_json(), "height": h.to_json(), "width": w.to_json()}
    candidates = [(b.opt, h.opt, w.opt), *declared_corners(dynamic), (min(b.max, 3), mid_h, mid_w)]
    return list(dict.fromkeys((n, 3, hh, ww) for n, hh, ww in candidates))


def torch_to_onnx(model: nn.Module, path: Path, config: ExportConfig) -> Path:
    """Export with torch.onnx's dynamo exporter; no simplification, no verification."""
    from torch.export import Dim

    axes = {0: config.batch, 2: config.height, 3: config.width}
    dynamic = {i: Dim(r.name, min=r.min, max=r.max) for i, r in axes.items() if r.dynamic}
    # torch.export specializes sizes 0 and 1: trace batch 2 whenever the range allows it, and
    # H, W >= 64 so that no feature map is 1x1 (at 32 the last stage is 1x1 and would be baked).
    example_batch = min(2, config.batch.max) if config.batch.dynamic else config.batch.opt
    example = torch.randn(example_batch, 3, _example_side(config.height),
                          _example_side(config.width))
    try:
        with quiet("torch"):
            program = torch.onnx.export(
                model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": dynamic}, opset_version=config.opset, dynamo=True,
                verbose=False)
    except Exception as e:  # torch.onnx raises many types; the message is what helps
        raise ExportError(f"torch.onnx could not export variant {config.variant!r}: "
                          f"{str(e).strip().splitlines()[-1][:300]}") from e
    proto = program.model_proto
    del program
    strip_trace_metadata(proto, module_outputs(proto, model))
    # weights in a file of their own beside it, written tensor by tensor: serializing a 554 MB
    # graph in one piece takes 2.2 GB more for a moment (the export's peak). The raw graph is
    # temporary; the simplified model.onnx is one file (finish_graph).
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=weights_file(path).name, size_threshold=1024)
    return path


def weights_file(path: Path) -> Path:
    """Where the raw graph's weights are (torch_to_onnx)."""
    return path.with_name(path.name + ".weights")


def finish_graph(raw: Path, final: Path) -> None:
    """The raw graph as one file, where it is shipped unsimplified (--no-simplify, or onnxsim
    failed): its weights read back in."""
    with atomic_path(final) as tmp:
        onnx.save_model(onnx.load(str(raw)), str(tmp))


def _example_side(axis: AxisRange) -> int:
    return axis.opt if axis.opt >= 64 or not axis.dynamic else min(64, axis.max)


def op_counts(path: Path) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))


def simplify_onnx(source: Path, target: Path) -> Path:
    import onnxsim

    # from the file to a file: onnxsim's C++ core reads and writes them itself (simplify_path),
    # rather than through a Python copy of the graph serialized and parsed again (2.7 GB more
    # at full size)
    with atomic_path(target) as tmp:
        written = tmp.with_name(tmp.name + ".onnxsim")
        try:
            simplified, ok = onnxsim.simplify(str(source), check_n=0, certify=False,
                                              output_path=str(written))
            del simplified  # what it wrote is read from the file
            if not ok:
                raise ExportError("onnxsim reported that the simplified graph could not be validated")
            copy_keeping_module_map(written, tmp)  # without onnxsim's bookkeeping
        finally:
            written.unlink(missing_ok=True)
    return target


def check_graph(path: Path) -> None:
    """onnx.checker with full_check (strict shape inference) on the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path} fails onnx.checker: {str(e).splitlines()[0][:300]}") from e


def run_references(runner, references: dict[tuple, tuple[np.ndarray, np.ndarray]],
                   label: str) -> dict[tuple, np.ndarray]:
    outputs = {}
    for shape, (x, _) in references.items():
        try:
            outputs[shape] = runner(x)
        except Exception as e:  # ORT raises its own types; a failed run is a failed check
            raise VerificationError(
                f"{label} fails to run at shape {'x'.join(map(str, shape))}, inside the declared "
                f"range: {str(e).strip().splitlines()[-1][:240]}") from e
    return outputs


def verify_onnx(outputs: dict[tuple, np.ndarray],
                references: dict[tuple, tuple[np.ndarray, np.ndarray]],
                tolerance: float, label: str) -> list[Comparison]:
    """Compare a graph's outputs with eager's; raise VerificationError naming the worst shape."""
    checks = [compare(outputs[shape], expected, shape, tolerance)
              for shape, (_, expected) in references.items()]
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: c.rel_max)
        raise VerificationError(
            f"{label} differs from eager PyTorch at {len(failed)} of {len(checks)} shapes; worst "
            f"{worst.describe()}. If the model has shape-dependent ops (adaptive pooling, "
            f"reshapes), make them follow the runtime shape (see models/layers.py)")
    return checks


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export_model(model: nn.Module, config: ExportConfig, out_dir: Path, weights: str,
                 log=print) -> ExportReport:
    """model -> out_dir/model.onnx, verified at several shapes; the unsimplified graph is kept
    only if simplification fails or changes results."""
    out_dir = ensure_writable_dir(out_dir)
    for stale in [*out_dir.glob(".*.partial"), *out_dir.glob(".*.partial.weights")]:  # a killed run's
        stale.unlink(missing_ok=True)
    log(f"exporting {config.variant} (opset {config.opset}; batch {config.batch.min}-"
        f"{config.batch.max}, H {config.height.min}-{config.height.max}, "
        f"W {config.width.min}-{config.width.max})")
    final = out_dir / "model.onnx"
    raw = out_dir / ".model.raw.onnx.partial"
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        torch_to_onnx(model, raw, config)
        timings["export"] = time.perf_counter() - start

        start = time.perf_counter()
        rng = np.random.default_rng(config.seed)
        references = {}
        for shape in verification_shapes(config):
            x = rng.standard_normal(shape, dtype=np.float32)
            references[shape] = (x, run_torch(model, x))
        label = "the exported ONNX graph"
        release_memory()  # what eager's runs left on the heap, before a session is made
        raw_outputs = run_references(OnnxRuntimeRunner(raw, memory_arena=False), references, label)
        release_memory()
        checks = verify_onnx(raw_outputs, references, config.tolerance, label)
        timings["verify"] = time.perf_counter() - start
        for check in checks:
            log(f"  verified {check.describe()}")
        counts = {"exported": op_counts(raw)}

        simplified, note = False, "simplification off (--no-simplify)"
        if config.simplify:
            start = time.perf_counter()
            simplified, note, checks = _simplify_and_check(raw, final, references, raw_outputs,
                                                           config, checks)
            timings["simplify"] = time.perf_counter() - start
        if simplified:
            counts["simplified"] = op_counts(final)
        else:
            finish_graph(raw, final)
        check_graph(final)
    finally:
        raw.unlink(missing_ok=True)
        weights_file(raw).unlink(missing_ok=True)
    report = ExportReport(final, weights, simplified, note, counts, checks, timings, peak_rss_mib())
    log(f"simplify: {note}")
    for stage, ops in counts.items():
        log(f"  ops {stage}: {sum(ops.values())} ({', '.join(f'{k} {v}' for k, v in ops.items())})")
    log("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; peak memory {report.peak_rss_mib:.0f} MiB")
    return report


def _simplify_and_check(raw: Path, final: Path, references: dict, raw_outputs: dict,
                        config: ExportConfig, checks: list[Comparison]
                        ) -> tuple[bool, str, list[Comparison]]:
    try:
        simplify_onnx(raw, final)
        outputs = run_references(OnnxRuntimeRunner(final, memory_arena=False), references,
                                 "the simplified graph")
        release_memory()
        simple_checks = verify_onnx(outputs, references, config.tolerance, "the simplified graph")
        drift = max(compare(outputs[s], raw_outputs[s], s, config.tolerance).rel_max
                    for s in references)
        if drift > config.tolerance:
            raise VerificationError(f"onnxsim changed results (rel max err {drift:.1e})")
        return True, f"onnxsim ok; max drift vs unsimplified {drift:.1e}", simple_checks
    except Exception as e:  # any onnxsim failure: keep the graph that verified, say so
        final.unlink(missing_ok=True)
        return False, f"onnxsim failed or changed results, kept the unsimplified graph: {e}", checks


def export(config: ExportConfig, out_dir: Path, log=print) -> ExportReport:
    model, weights = build_model(config)
    log(f"weights: {weights}")
    return export_model(model, config, out_dir, weights, log)


def export_manifest(config: ExportConfig, report: ExportReport, out_dir: Path) -> Manifest:
    return Manifest(
        variant=config.variant,
        num_classes=config.num_classes,
        weights=report.weights,
        model={"variant": config.variant, "num_classes": config.num_classes,
               "model_width": config.model_width, "seed": config.seed,
               "checkpoint": str(config.checkpoint) if config.checkpoint else None,
               "checkpoint_sha256": sha256_file(config.checkpoint) if config.checkpoint else None,
               "reset_head": config.reset_head,
               "attention_memory_budget": config.attention_memory_budget},
        input={"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, "height", "width"]},
        output={"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", config.num_classes]},
        labels=list(config.labels) if config.labels else None,
        dynamic={"batch": config.batch.to_json(), "height": config.height.to_json(),
                 "width": config.width.to_json()},
        preprocessing=Preprocessing.for_size(config.height.opt, config.width.opt).to_json(),
        artifacts=[artifact_entry(report.onnx_path, out_dir, "onnx", "fp32", "any")],
        export={
            "exporter": "torch.onnx (dynamo)", "opset": config.opset,
            "simplified": report.simplified, "simplify_note": report.simplify_note,
            "op_counts": report.op_counts,
            "timings_s": {k: round(v, 2) for k, v in report.timings_s.items()},
            "peak_rss_mib": round(report.peak_rss_mib),
        },
        parity={"onnx-fp32-vs-eager": {
            "passed": all(c.passed for c in report.checks),
            "worst_rel_max": max(c.rel_max for c in report.checks),
            "checks": [c.to_json() for c in report.checks]}},
        bench=None,
        versions=tool_versions(),
    )


def export_to_folder(config: ExportConfig, out_dir: Path, log=print) -> Path:
    """The `export` stage: out_dir/model.onnx and out_dir/manifest.json. Returns the manifest.
    Whatever an earlier build left of verdicts and reports in ``out_dir`` goes first."""
    removed = invalidate_verdicts(Path(out_dir), None) if Path(out_dir).is_dir() else []
    if removed:
        log(f"removed what an earlier build derived from its artifacts: {', '.join(removed)}")
    report = export(config, out_dir, log)
    record = export_manifest(config, report, out_dir)
    describe_onnx(report.onnx_path, record)  # its labels and preprocessing, before its sha256
    record.artifacts = [artifact_entry(report.onnx_path, out_dir, "onnx", "fp32", "any")]
    manifest = write_manifest(out_dir / "manifest.json", record)
    log(f"wrote {report.onnx_path} and {manifest}")
    return manifest
