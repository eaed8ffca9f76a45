"""Why the IR is held to its conversion redone (`convert_model` of its source, in memory) and
not to OpenVINO's reading of the ONNX file: OpenVINO's reading of an int8 ONNX graph, against
the IR `openvino.convert_model` makes of it (what the engines stage ships) and the IR
`Core.read_model` + `save_model` makes of it, on the same images: rel L2 of each against the
ONNX reading, and each one's p50 latency; then the saved IR against the gate's reference (the
conversion redone in memory), which is 0.

    .venv/bin/python -m benchmarks.openvino_ir_numerics build/ci/se/manifest.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from attnvgg_runtime.readers.openvino import OpenVinoRunner
from attnvgg_runtime.timing import BenchConfig, latency
from attnvgg_runtime.verify.measures import relative_l2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--graph", default="model.int8-cpu.onnx")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    import openvino as ov

    manifest = json.loads(args.manifest.read_text())
    source = str(args.manifest.parent / args.graph)
    size = manifest["dynamic"]["height"]["opt"], manifest["dynamic"]["width"]["opt"]
    x = np.random.default_rng(0).standard_normal((args.images, 3, *size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"onnx read directly": source,
                 "IR from convert_model": f"{tmp}/convert.xml", "IR from read_model": f"{tmp}/read.xml"}
        ov.save_model(ov.convert_model(source), paths["IR from convert_model"], compress_to_fp16=False)
        ov.save_model(ov.Core().read_model(source), paths["IR from read_model"], compress_to_fp16=False)
        runners = {name: OpenVinoRunner(path) for name, path in paths.items()}
        reference = runners["onnx read directly"](x)
        for name, run in runners.items():
            timed = latency(lambda r=run: r(x), BenchConfig(warmup=2, min_iterations=10,
                                                            seconds_per_case=2.0))
            print(f"{name}: rel L2 {relative_l2(run(x), reference):.4g} against the ONNX reading; "
                  f"p50 {timed['p50_ms']:.1f} ms per batch of {args.images} at {size[0]}x{size[1]}")
        redone = OpenVinoRunner(source, convert=True)(x)
        print(f"IR from convert_model against the conversion redone in memory (the gate's "
              f"reference): rel L2 {relative_l2(runners['IR from convert_model'](x), redone):.4g}")


if __name__ == "__main__":
    main()
