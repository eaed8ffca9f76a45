"""The speed of every CPU artifact under every runtime installed on this box, at the build's opt
size: the build machine's recommendation is about the build machine's CPU, and which runtime
and precision is fastest flips with the CPU (docs/edge.md). Writes box-bench.json beside the
manifest, bound to this CPU and to the bytes it timed; `attnvgg-runtime classify` then chooses
by it (attnvgg_runtime.classify.choose)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnvgg_runtime.artifacts import installed_runtimes, load_runner, runnable
from attnvgg_runtime.errors import ReaderUnavailable, ToolchainError
from attnvgg_runtime.files import write_text_atomic
from attnvgg_runtime.first_result import first_results
from attnvgg_runtime.manifest import read_manifest, verify_artifacts
from attnvgg_runtime.metadata import FrameInput, to_frames
from attnvgg_runtime.probe import box_identity
from attnvgg_runtime.readers import reader_version
from attnvgg_runtime.timing import BenchConfig, latency

BOX_BENCH_JSON = "box-bench.json"


class NothingTimed(ToolchainError):
    """A bench that timed nothing: an error (exit 2), and box-bench.json is left as it was."""


def bench_box(manifest_path: Path, batches: tuple[int, ...] = (1, 8), seconds: float = 5.0,
              log=print, first_result: bool = True) -> dict:
    """p50/p90 latency of every artifact each installed runtime serves, at the opt size, and
    (``first_result``) each one's cold start: a fresh process's first result, and with OpenVINO's
    model cache warm (attnvgg_runtime.first_result); returns box-bench.json's content (also
    written beside the manifest)."""
    manifest_path = Path(manifest_path)
    verify_artifacts(manifest_path)
    manifest = read_manifest(manifest_path)
    dyn = manifest.dynamic
    config = BenchConfig(batches=batches, seconds_per_case=seconds, torch_compile=False)
    box = box_identity()
    runtimes = installed_runtimes()
    if not runtimes:
        raise ReaderUnavailable("neither onnxruntime nor openvino is installed here, so nothing can be "
                                "timed: install the runtime wheel's [onnxruntime] or [openvino] extra "
                                "(docs/edge.md)")
    if not any(runnable(manifest, r) for r in runtimes):
        raise NothingTimed(f"{manifest_path} lists no artifact that {', '.join(runtimes)} runs; "
                           f"install the runtime its artifacts are for (docs/edge.md)")
    rows, starts = [], []
    for runtime in runtimes:
        for artifact in runnable(manifest, runtime):
            if first_result:  # before this process loads it: the child reads it cold
                start = first_results(manifest_path, artifact, runtime)
                starts.append({"runtime": runtime, "artifact": artifact.path, "sha256": artifact.sha256,
                               "precision": artifact.precision, "bytes": artifact.bytes
                               + (artifact.weights.bytes if artifact.weights else 0), **start})
                warm = (f", {start['cache_warm_s']:6.2f} s with the model cache warm"
                        if "cache_warm_s" in start else "")
                log(f"first result: {start['cold_s']:6.2f} s cold{warm}  {runtime} {artifact.path} "
                    f"({artifact.precision})")
            run = load_runner(manifest_path, artifact, runtime)
            frame_order = run.channel_order if isinstance(run, FrameInput) else None
            run = run.runner if frame_order else run  # timed on the uint8 frames it takes
            for size in batches:
                x = np.random.default_rng(0).standard_normal(
                    (size, 3, dyn["height"]["opt"], dyn["width"]["opt"])).astype(np.float32)
                if frame_order:
                    x = to_frames(x, manifest.preprocessing, frame_order)
                timing = latency(lambda x=x, run=run: run(x), config)
                rows.append({"runtime": runtime, "reader_version": reader_version(runtime),
                             "artifact": artifact.path, "sha256": artifact.sha256,
                             "precision": artifact.precision,
                             "runtime_options": artifact.runtime_options, "batch": size,
                             **timing})
                log(f"batch {size}: {timing['p50_ms']:8.1f} ms  {runtime} {artifact.path} "
                    f"({artifact.precision})")
    report = {"manifest": str(manifest_path), "box": box, "cpu": box["cpu"],
              "input": [dyn["height"]["opt"], dyn["width"]["opt"]], "rows": rows,
              "first_result": starts}
    path = write_text_atomic(manifest_path.parent / BOX_BENCH_JSON, json.dumps(report, indent=2) + "\n")
    log(f"(written to {path})")
    return report


def read_box_bench(root: Path, cpu_model: str) -> dict | None:
    """This box's bench (box-bench.json) where it was measured on a CPU of this model; None
    otherwise (never run here, or copied from another box)."""
    try:
        report = json.loads((Path(root) / BOX_BENCH_JSON).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("cpu", {}).get("model") == cpu_model else None
