"""Stage: speed. Latency percentiles and throughput per artifact and batch size, with speedups
over eager PyTorch measured in the same run (this machine is noisy: only same-run ratios count),
and achieved MAC/s against this machine's peak from a GEMM microbenchmark."""

from __future__ import annotations

import json
import os
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

from .export import model_from_manifest
from .files import write_text_atomic
from .manifest import read_manifest, write_manifest
from .report import LATENCY_PNG, plot_latency, write_report
from .runners import OnnxRuntimeRunner


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


def _torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], object]:
    def run(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x))
    return run


def bench_runners(manifest: dict, root: Path, config: BenchConfig) -> dict[str, tuple]:
    """name -> (runner, precision). eager first: every speedup is over it."""
    model = model_from_manifest(manifest)
    runners: dict[str, tuple] = {"eager-fp32": (_torch_runner(model), "fp32")}
    if config.torch_compile:
        runners["torch.compile-fp32"] = (_torch_runner(torch.compile(model)), "fp32")
    for artifact in manifest["artifacts"]:
        name = Path(artifact["path"]).name
        if artifact["target"] == "onnxruntime-cpu":
            runners[f"ort:{name}"] = (OnnxRuntimeRunner(root / artifact["path"]), artifact["precision"])
        elif artifact["format"] == "plan":
            from .tensorrt_engine import TensorRTRunner

            trusted = manifest.get("tensorrt", {}).get("version_compatible", False)
            runners[f"trt:{name}"] = (TensorRTRunner(root / artifact["path"], host_code_allowed=trusted),
                                      artifact["precision"])
    return runners


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
    peaks = gemm_peak_gmacs(seconds=min(2.0, config.seconds_per_case))
    log(f"machine peak (ONNX Runtime GEMM): fp32 {peaks['fp32']:.0f} GMAC/s, "
        f"int8 {peaks['int8']:.0f} GMAC/s")
    runners = bench_runners(manifest, root, config)
    results: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    cases = [(name, batch) for batch in config.batches for name in runners]
    for name, batch in tqdm(cases, desc="benchmarking", unit="case"):
        runner, precision = runners[name]
        x = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
        try:
            result = latency(lambda r=runner, x=x: r(x), config)
        except Exception as e:  # torch.compile can fail on some stacks: record why, go on
            results.setdefault(name, {})[str(batch)] = {"error": str(e).splitlines()[0][:200]}
            continue
        result["images_per_s"] = batch / (result["p50_ms"] / 1000)
        if macs_per_image:
            achieved = macs_per_image * result["images_per_s"] / 1e9
            result["gmacs_per_s"] = achieved
            result["peak_share"] = achieved / peaks["int8" if precision == "int8" else "fp32"]
        results.setdefault(name, {})[str(batch)] = result
    for batch in map(str, config.batches):
        eager = results["eager-fp32"][batch]["p50_ms"]
        for name in results:
            if "p50_ms" in results[name].get(batch, {}):
                results[name][batch]["speedup_vs_eager"] = eager / results[name][batch]["p50_ms"]
    bench = {"input": [height, width], "threads": os.cpu_count(), "peak_gmacs": peaks,
             "macs_per_image": macs_per_image, "results": results}
    write_text_atomic(root / "bench.json", json.dumps(bench, indent=2) + "\n")
    manifest["bench"] = {name: {b: {k: round(v, 3) for k, v in r.items() if k in
                                    ("p50_ms", "speedup_vs_eager", "images_per_s")}
                                for b, r in per_batch.items()} for name, per_batch in results.items()}
    write_manifest(manifest_path, manifest)
    plot_latency(root / LATENCY_PNG, bench)
    write_report(root)
    log(format_bench(bench))
    return root / "bench.json"


def format_bench(bench: dict) -> str:
    lines = ["| runtime | batch | p50 ms | p90 ms | p99 ms | img/s | x eager | GMAC/s | % of peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, per_batch in bench["results"].items():
        for batch, r in per_batch.items():
            if "error" in r:
                lines.append(f"| {name} | {batch} | failed: {r['error']} | | | | | | |")
                continue
            lines.append(
                f"| {name} | {batch} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['images_per_s']:.1f} | {r['speedup_vs_eager']:.2f} | "
                f"{r.get('gmacs_per_s', 0):.0f} | {100 * r.get('peak_share', 0):.0f} |")
    return "\n".join(lines)
