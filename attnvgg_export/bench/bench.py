"""Stage: speed. Latency percentiles and throughput per artifact and batch size, with speedups
over eager PyTorch measured in the same run (this machine is noisy: only same-run ratios count),
and achieved MAC/s against this machine's peak from a GEMM microbenchmark."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attnvgg_export.bench.peaks import gemm_peak_gmacs, openvino_gemm_peak_gmacs, torch_bf16_peak_gmacs
from attnvgg_export.bench.recommend import gate_passed, recommend
from attnvgg_export.models.card import model_card
from attnvgg_export.report.report import (
    LATENCY_PNG,
    format_bench,
    format_recommendation,
    plot_latency,
    publish,
)
from attnvgg_export.runtime.eager import eager_runner, model_from_manifest
from attnvgg_runtime.files import write_text_atomic
from attnvgg_runtime.first_result import first_results
from attnvgg_runtime.manifest import Manifest, inside_build, read_manifest
from attnvgg_runtime.metadata import to_frames
from attnvgg_runtime.readers.cpu import cpu_identity, exact_int8_options, openvino_has_bf16
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.readers.openvino import OpenVinoRunner, precision_hint, reader_name
from attnvgg_runtime.timing import BenchConfig, latency


@dataclass
class Row:
    """One thing a user could pick: a runtime on an artifact (or eager PyTorch)."""

    load: Callable[[], Callable[[np.ndarray], object]]  # made when measured, then released
    precision: str
    runtime: str  # eager, torch.compile, onnxruntime, openvino, tensorrt
    artifact: str | None = None
    target: str | None = None
    runtime_options: dict | None = None
    frame: dict | None = None  # a camera-frame artifact's input: timed on uint8 frames


def bench_rows(manifest: Manifest, root: Path, config: BenchConfig, bf16: bool,
               plan_code_allowed: bool = False) -> dict[str, Row]:
    """name -> Row. eager fp32 first: every speedup is over it. ``plan_code_allowed``: TensorRT
    plans may run the host code they embed, as the person running the bench asked
    (--allow-plan-code); never by the manifest."""
    model = model_from_manifest(manifest)
    rows = {"eager fp32": Row(lambda: eager_runner(model), "fp32", "eager")}
    if bf16:
        rows["eager bf16 autocast"] = Row(lambda: eager_runner(model, bf16=True), "bf16", "eager")
    if config.torch_compile:
        rows["torch.compile fp32"] = Row(lambda: eager_runner(model, compiled=True), "fp32",
                                         "torch.compile")
    for a in manifest.artifacts:
        path, options = inside_build(root, a.path), a.runtime_options or None
        if a.target in ("onnxruntime-cpu", "any") and a.format in ("onnx", "ort"):
            # as the gate measured it and the consumer runs it (exact int8 where recorded)
            exact = a.exact_int8_session_options is not None
            rows[f"onnxruntime {a.path}"] = Row(
                lambda p=path, e=exact: OnnxRuntimeRunner(p, exact_int8=e), a.precision,
                "onnxruntime", a.path, "onnxruntime-cpu", (exact_int8_options() if exact else {}) or None,
                a.input)
        elif a.format == "openvino-ir" and (a.precision != "bf16" or bf16):
            hint, runtime = precision_hint(a), reader_name(a)  # as the gate names it
            rows[f"{runtime} {a.path}"] = Row(lambda p=path, h=hint: OpenVinoRunner(p, h),
                                                 a.precision, runtime, a.path, "openvino-cpu",
                                                 options, a.input)
        elif a.format == "plan":
            from attnvgg_runtime.readers.tensorrt import (
                TensorRTRunner,  # tensorrt only where a plan is listed
            )

            rows[f"tensorrt {a.path}"] = Row(
                lambda p=path: TensorRTRunner(p, host_code_allowed=plan_code_allowed), a.precision,
                "tensorrt", a.path, "tensorrt")
    return rows


def run_bench(manifest_path: Path, config: BenchConfig | None = None, log=print,
              plan_code_allowed: bool = False) -> Path:
    config = config or BenchConfig()
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    dyn = manifest.dynamic
    height, width = dyn["height"]["opt"], dyn["width"]["opt"]
    macs_per_image = None
    if height == width:
        spec = manifest.model
        macs_per_image = model_card(spec["variant"], height, spec["num_classes"],
                                    spec["model_width"]).macs["total"]
    cpu = cpu_identity()
    bf16 = openvino_has_bf16()
    # GEMM probes of two libraries at two sizes (cache effects differ); the limit a row's share
    # is of is the best of them and of the rows themselves (peaks.machine_limits)
    peak_seconds = min(1.0, config.seconds_per_case)
    probes = {"onnxruntime": [gemm_peak_gmacs(n, peak_seconds) for n in (1024, 2048)],
              "openvino": [openvino_gemm_peak_gmacs(n, peak_seconds) for n in (1024, 2048)]}
    probes = {lib: {k: max(p[k] for p in runs) for k in runs[0]} for lib, runs in probes.items()}
    if bf16:
        probes["torch"] = {"bf16": max(torch_bf16_peak_gmacs(n, peak_seconds) for n in (1024, 2048))}
    log(f"machine: {cpu['model']} ({', '.join(cpu['isa'])}); GEMM probes: "
        + "; ".join(f"{lib} " + ", ".join(f"{k} {v:.0f}" for k, v in p.items())
                    for lib, p in probes.items()) + " GMAC/s")
    rows = bench_rows(manifest, root, config, bf16, plan_code_allowed)
    results: dict[str, dict] = {}
    inputs = {b: np.random.default_rng(b).standard_normal((b, 3, height, width), dtype=np.float32)
              for b in config.batches}
    # a frame artifact is timed on the uint8 frames it takes, not on their conversion
    frames = {b: to_frames(x, manifest.preprocessing) for b, x in inputs.items()}
    progress = tqdm(total=len(rows) * len(config.batches), desc="benchmarking", unit="case")
    for name, row in rows.items():  # one runtime loaded at a time: memory stays that of one
        try:
            runner = row.load()
        except Exception as e:  # torch.compile can fail on some stacks: record why, go on
            results[name] = {str(b): {"error": str(e).splitlines()[0][:200]} for b in config.batches}
            progress.update(len(config.batches))
            continue
        for batch, x in (frames if row.frame else inputs).items():
            try:
                result = latency(lambda x=x, run=runner: run(x), config)
            except Exception as e:
                results.setdefault(name, {})[str(batch)] = {"error": str(e).splitlines()[0][:200]}
                progress.update()
                continue
            result["images_per_s"] = batch / (result["p50_ms"] / 1000)
            if macs_per_image:
                result["gmacs_per_s"] = macs_per_image * result["images_per_s"] / 1e9
            results.setdefault(name, {})[str(batch)] = result
            progress.update()
        del runner
    progress.close()
    starts = first_results_of(manifest_path, manifest, rows, log) if config.first_result else {}
    for batch in map(str, config.batches):
        eager = results["eager fp32"][batch]["p50_ms"]
        for name in results:
            if "p50_ms" in results[name].get(batch, {}):
                results[name][batch]["speedup_vs_eager"] = eager / results[name][batch]["p50_ms"]
    passed = gate_passed(manifest)
    recommended = recommend(results, rows, passed, config.batches)
    bench = {"input": [height, width], "threads": os.cpu_count(), "cpu": cpu, "gemm_probes": probes,
             "macs_per_image": macs_per_image, "gate_checked": passed is not None,
             "rows": {name: {"runtime": r.runtime, "artifact": r.artifact, "precision": r.precision,
                             "target": r.target} for name, r in rows.items()},
             "results": results, "recommended": recommended, "first_result": starts}
    write_text_atomic(root / "bench.json", json.dumps(bench, indent=2) + "\n")
    manifest.bench = {
        "cpu": cpu, "recommended": recommended,
        "results": {name: {b: {k: round(v, 3) for k, v in r.items() if k in
                               ("p50_ms", "speedup_vs_eager", "images_per_s")}
                           for b, r in per_batch.items()} for name, per_batch in results.items()}}
    plot_latency(root / LATENCY_PNG, bench)
    publish(root, manifest)
    log(format_bench(bench))
    log(format_recommendation(bench))
    return root / "bench.json"


def first_results_of(manifest_path: Path, manifest: Manifest, rows: dict[str, Row], log) -> dict:
    """Row name -> its artifact's first result in a fresh process (attnvgg_runtime.first_result:
    cold, and with OpenVINO's model cache warm), for every CPU artifact row."""
    starts = {}
    for name, row in rows.items():
        if row.runtime not in ("onnxruntime", "openvino", "openvino-bf16") or row.artifact is None:
            continue
        artifact = next(a for a in manifest.artifacts
                        if a.path == row.artifact and a.precision == row.precision)
        try:
            starts[name] = first_results(manifest_path, artifact, row.runtime.removesuffix("-bf16"))
        except Exception as e:  # recorded, as a row that fails to time is
            starts[name] = {"error": str(e).splitlines()[0][:200]}
            continue
        warm = starts[name].get("cache_warm_s")
        log(f"  first result {starts[name]['cold_s']:.2f} s cold"
            + (f", {warm:.2f} s with the model cache warm" if warm is not None else "") + f": {name}")
    return starts
