"""What int8 computes on this CPU's kernels: each int8 graph of a build (and the CPU graph with
8-bit weights instead of 7, made here from the build's cached ranges) read by ONNX Runtime with its
default kernels and with exact int8 products (EXACT_INT8), and by OpenVINO, against eager
PyTorch fp32 on the build's held-out images; with latency at the opt size, in one run.

    .venv/bin/python -m benchmarks.int8_kernels build/se/manifest.json [--no-speed]

On x86 without VNNI the default kernels saturate (docs/precision.md, "int8 on CPUs without
VNNI"); run it again under `qemu-x86_64 -cpu Haswell` to see AVX2's numbers on any host (speed
there means nothing).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from attnvgg_export.calibration.calibrate import CalibrationResult
from attnvgg_export.graphs.quantize import Int8Target, onnx_to_int8
from attnvgg_export.runtime.eager import model_from_manifest, run_torch
from attnvgg_export.verify.cases import heldout_images
from attnvgg_runtime.manifest import read_manifest
from attnvgg_runtime.readers import run_batches
from attnvgg_runtime.readers.cpu import cpu_identity
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.readers.openvino import OpenVinoRunner
from attnvgg_runtime.timing import BenchConfig, latency
from attnvgg_runtime.verify.measures import metrics


def graphs(root: Path, manifest, folder: Path) -> dict[str, Path]:
    calib = manifest.calibration
    ranges = CalibrationResult(root / calib["ranges"], calib["method"], calib["images"], True, 0.0)
    excluded = [r["node"] for r in calib["fallback"]["int8-cpu"]["fallen_back"]]
    eight_bit = onnx_to_int8(root / "model.onnx", folder / "model.int8-cpu-8bit.onnx", ranges,
                             Int8Target.CPU, excluded, weight_bits=8)
    return {"int8-trt (8-bit weights)": root / Int8Target.TENSORRT.filename,
            "int8-cpu (7-bit weights)": root / Int8Target.CPU.filename,
            "int8-cpu with 8-bit weights": eight_bit}


READERS = {"ORT default kernels": lambda p: OnnxRuntimeRunner(p),
           "ORT exact int8": lambda p: OnnxRuntimeRunner(p, exact_int8=True),
           "OpenVINO": lambda p: OpenVinoRunner(p)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    root = args.manifest.parent
    manifest = read_manifest(args.manifest)
    heldout = heldout_images(manifest)
    model = model_from_manifest(manifest)
    reference = run_batches(lambda x: run_torch(model, x), heldout.images)
    cpu = cpu_identity()
    print(f"CPU: {cpu['model']} ({', '.join(cpu['isa'])}); {len(heldout)} held-out images "
          f"({heldout.source}) at {'x'.join(map(str, heldout.images.shape[1:]))}")
    opt = heldout.images.shape[1:]
    inputs = {b: np.random.default_rng(b).standard_normal((b, *opt), dtype=np.float32) for b in (1, 8)}
    config = BenchConfig(seconds_per_case=args.seconds)
    print("| graph | reader | rel L2 | min cosine | top-1 agreement | accuracy | p50 ms b1 | p50 ms b8 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for graph, path in graphs(root, manifest, Path(folder)).items():
            for reader, load in READERS.items():
                runner = load(path)
                m = metrics(run_batches(runner, heldout.images), reference, heldout.labels)
                speed = ["", ""] if args.no_speed else [
                    f"{latency(lambda r=runner, x=x: r(x), config)['p50_ms']:.1f}" for x in inputs.values()]
                accuracy = f"{100 * m['accuracy']:.2f} (eager {100 * m['accuracy_eager']:.2f})" \
                    if "accuracy" in m else "-"
                print(f"| {graph} | {reader} | {m['rel_l2']:.4f} | {m['cosine']:.4f} | {m['top1']:.3f} | "
                      f"{accuracy} | {' | '.join(speed)} |", flush=True)


if __name__ == "__main__":
    main()
