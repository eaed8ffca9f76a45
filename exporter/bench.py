"""Stage: speed. Latency percentiles and throughput per artifact and batch size, with speedups
over eager PyTorch measured in the same run (this machine is noisy: only same-run ratios count),
and achieved MAC/s against this machine's peak from a GEMM microbenchmark."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from tqdm import tqdm

from models.card import model_card

from .cpu import cpu_model_and_flags, exact_int8_options, openvino_has_bf16
from .export import model_from_manifest
from .files import write_text_atomic
from .manifest import read_manifest, write_manifest
from .report import LATENCY_PNG, format_bench, format_recommendation, plot_latency, write_report
from .runners import OnnxRuntimeRunner, OpenVinoRunner


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 2
    min_iterations: int = 5
    seconds_per_case: float = 10.0
    torch_compile: bool = True


def latency(fn: Callable[[], object], config: BenchConfig) -> dict:
    for _ in range(config.warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + config.seconds_per_case
    while len(samples) < config.min_iterations or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if len(samples) >= 200:
            break
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "iterations": len(samples)}


def _gemm_model(int8: bool, n: int) -> onnx.ModelProto:
    a_type, b_type = (TensorProto.UINT8, TensorProto.INT8) if int8 else (TensorProto.FLOAT,) * 2
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("a", a_type, [n, n]),
                         helper.make_tensor_value_info("b", b_type, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32 if int8 else TensorProto.FLOAT,
                                       [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # onnx 1.23 stamps 14; ONNX Runtime 1.31 reads up to 13
    return model


def gemm_peak_gmacs(n: int = 1024, seconds: float = 2.0) -> dict[str, float]:
    """fp32 and int8 (U8S8) GEMM throughput of ONNX Runtime on this machine."""
    import onnxruntime as ort

    peaks = {}
    rng = np.random.default_rng(0)
    for name, int8 in (("fp32", False), ("int8", True)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(_gemm_model(int8, n).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        if int8:
            feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                     "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
        else:
            feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
        result = latency(lambda s=session, f=feeds: s.run(None, f),
                         BenchConfig(warmup=2, min_iterations=5, seconds_per_case=seconds))
        peaks[name] = n**3 / (result["p50_ms"] / 1000) / 1e9
    return peaks


def torch_bf16_peak_gmacs(n: int = 1024, seconds: float = 2.0) -> float:
    """bf16 GEMM throughput of torch (oneDNN: AMX or AVX512-BF16) on this machine."""
    a, b = (torch.randn(n, n).to(torch.bfloat16) for _ in range(2))
    result = latency(lambda: torch.matmul(a, b),
                     BenchConfig(warmup=2, min_iterations=5, seconds_per_case=seconds))
    return n**3 / (result["p50_ms"] / 1000) / 1e9


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_int8", "amx_bf16")


def cpu_identity() -> dict:
    """The CPU a measurement is a property of: model name and the ISA flags that pick kernels."""
    model, flags = cpu_model_and_flags() or ("", set())
    return {"model": model or platform.processor() or "unknown",
            "isa": [f for f in ISA_FLAGS if f in flags],
            "threads": os.cpu_count()}


@dataclass
class Row:
    """One thing a user could pick: a runtime on an artifact (or eager PyTorch)."""

    load: Callable[[], Callable[[np.ndarray], object]]  # made when measured, then released
    precision: str
    runtime: str  # eager, torch.compile, onnxruntime, openvino, tensorrt
    artifact: str | None = None
    target: str | None = None
    runtime_options: dict | None = None


def _torch_runner(model: torch.nn.Module, bf16: bool = False) -> Callable[[np.ndarray], object]:
    def run(x: np.ndarray):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(x))
    return run


def bench_rows(manifest: dict, root: Path, config: BenchConfig, bf16: bool) -> dict[str, Row]:
    """name -> Row. eager fp32 first: every speedup is over it."""
    model = model_from_manifest(manifest)
    rows = {"eager fp32": Row(lambda: _torch_runner(model), "fp32", "eager")}
    if bf16:
        rows["eager bf16 autocast"] = Row(lambda: _torch_runner(model, bf16=True), "bf16", "eager")
    if config.torch_compile:
        rows["torch.compile fp32"] = Row(lambda: _torch_runner(torch.compile(model)), "fp32",
                                         "torch.compile")
    trusted = manifest.get("tensorrt", {}).get("version_compatible", False)
    for a in manifest["artifacts"]:
        path, options = root / a["path"], a.get("runtime_options")
        if a["target"] in ("onnxruntime-cpu", "any") and a["format"] in ("onnx", "ort"):
            # as the gate measured it and the consumer runs it (exact int8 where recorded)
            exact = "exact_int8_session_options" in a
            rows[f"onnxruntime {a['path']}"] = Row(
                lambda p=path, e=exact: OnnxRuntimeRunner(p, exact_int8=e), a["precision"],
                "onnxruntime", a["path"], "onnxruntime-cpu", (exact_int8_options() if exact else {}) or None)
        elif a["format"] == "openvino-ir" and (a["precision"] != "bf16" or bf16):
            hint = (options or {}).get("INFERENCE_PRECISION_HINT", "f32")
            runtime = "openvino-bf16" if hint == "bf16" else "openvino"  # as the gate names it
            rows[f"{runtime} {a['path']}"] = Row(lambda p=path, h=hint: OpenVinoRunner(p, h),
                                                 a["precision"], runtime, a["path"], "openvino-cpu",
                                                 options)
        elif a["format"] == "plan":
            from .tensorrt_engine import TensorRTRunner

            rows[f"tensorrt {a['path']}"] = Row(
                lambda p=path: TensorRTRunner(p, host_code_allowed=trusted), a["precision"],
                "tensorrt", a["path"], "tensorrt")
    return rows


def _gate_passed(root: Path) -> set[tuple[str, str]] | None:
    """(artifact, reader) pairs that passed the last `make parity`, or None if it has not run."""
    path = root / "parity.json"
    if not path.is_file():
        return None
    parity = json.loads(path.read_text())
    return {(a["path"], a.get("reader", "onnxruntime")) for a in parity["artifacts"]
            if a["passed"] and not a["skipped"]}


def recommend(results: dict, rows: dict[str, Row], passed: set | None, batches) -> dict:
    """Per batch size and target, the fastest artifact that passed the gate."""
    chosen: dict = {}
    for batch in map(str, batches):
        for target in ("onnxruntime-cpu", "openvino-cpu", "tensorrt"):
            candidates = [(results[name][batch]["p50_ms"], name) for name, row in rows.items()
                          if row.target == target and "p50_ms" in results[name].get(batch, {})
                          and passed is not None and (row.artifact, row.runtime) in passed]
            if candidates:
                _, name = min(candidates)
                row = rows[name]
                chosen.setdefault(batch, {})[target] = {
                    "row": name, "artifact": row.artifact, "precision": row.precision,
                    "runtime_options": row.runtime_options or {},
                    "p50_ms": results[name][batch]["p50_ms"],
                    "speedup_vs_eager": results[name][batch]["speedup_vs_eager"]}
    return chosen


def run_bench(manifest_path: Path, config: BenchConfig = BenchConfig(), log=print) -> Path:
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    dyn = manifest["dynamic"]
    height, width = dyn["height"]["opt"], dyn["width"]["opt"]
    macs_per_image = None
    if height == width:
        spec = manifest["model"]
        macs_per_image = model_card(spec["variant"], height, spec["num_classes"],
                                    spec["model_width"]).macs["total"]
    cpu = cpu_identity()
    bf16 = openvino_has_bf16()
    # the best GEMM measured here, at two sizes (cache effects differ); a runtime's fused
    # convolutions can beat it, so a share above 100% means the probe, not the runtime, fell short
    peak_seconds = min(1.0, config.seconds_per_case)
    probes = [gemm_peak_gmacs(n, peak_seconds) for n in (1024, 2048)]
    peaks = {k: max(p[k] for p in probes) for k in probes[0]}
    if bf16:
        peaks["bf16"] = max(torch_bf16_peak_gmacs(n, peak_seconds) for n in (1024, 2048))
    log(f"machine: {cpu['model']} ({', '.join(cpu['isa'])}); peak GEMM: "
        + ", ".join(f"{k} {v:.0f} GMAC/s" for k, v in peaks.items()))
    rows = bench_rows(manifest, root, config, bf16)
    results: dict[str, dict] = {}
    inputs = {b: np.random.default_rng(b).standard_normal((b, 3, height, width), dtype=np.float32)
              for b in config.batches}
    progress = tqdm(total=len(rows) * len(config.batches), desc="benchmarking", unit="case")
    for name, row in rows.items():  # one runtime loaded at a time: memory stays that of one
        try:
            runner = row.load()
        except Exception as e:  # torch.compile can fail on some stacks: record why, go on
            results[name] = {str(b): {"error": str(e).splitlines()[0][:200]} for b in config.batches}
            progress.update(len(config.batches))
            continue
        for batch, x in inputs.items():
            try:
                result = latency(lambda x=x, run=runner: run(x), config)
            except Exception as e:
                results.setdefault(name, {})[str(batch)] = {"error": str(e).splitlines()[0][:200]}
                progress.update()
                continue
            result["images_per_s"] = batch / (result["p50_ms"] / 1000)
            if macs_per_image:
                achieved = macs_per_image * result["images_per_s"] / 1e9
                result["gmacs_per_s"] = achieved
                result["peak_share"] = achieved / peaks.get(row.precision, peaks["fp32"])
            results.setdefault(name, {})[str(batch)] = result
            progress.update()
        del runner
    progress.close()
    for batch in map(str, config.batches):
        eager = results["eager fp32"][batch]["p50_ms"]
        for name in results:
            if "p50_ms" in results[name].get(batch, {}):
                results[name][batch]["speedup_vs_eager"] = eager / results[name][batch]["p50_ms"]
    passed = _gate_passed(root)
    recommended = recommend(results, rows, passed, config.batches)
    bench = {"input": [height, width], "threads": os.cpu_count(), "cpu": cpu, "peak_gmacs": peaks,
             "macs_per_image": macs_per_image, "gate_checked": passed is not None,
             "rows": {name: {"runtime": r.runtime, "artifact": r.artifact, "precision": r.precision,
                             "target": r.target} for name, r in rows.items()},
             "results": results, "recommended": recommended}
    write_text_atomic(root / "bench.json", json.dumps(bench, indent=2) + "\n")
    manifest["bench"] = {
        "cpu": cpu, "recommended": recommended,
        "results": {name: {b: {k: round(v, 3) for k, v in r.items() if k in
                               ("p50_ms", "speedup_vs_eager", "images_per_s")}
                           for b, r in per_batch.items()} for name, per_batch in results.items()}}
    write_manifest(manifest_path, manifest)
    plot_latency(root / LATENCY_PNG, bench)
    write_report(root)
    log(format_bench(bench))
    log(format_recommendation(bench))
    return root / "bench.json"
