"""Which emulated aarch64 cores each runtime runs on: the CI build's CPU int8 graph on one random
64x64 image under ONNX Runtime and under OpenVINO, per `qemu-aarch64 -cpu` model; prints the sum
of the absolute logits (equal sums: the same kernels' arithmetic). Runs on the emulated box:

    for cpu in neoverse-n1 cortex-a72 cortex-a53 neoverse-v1 a64fx max; do
      for runtime in onnxruntime openvino; do PYTHONPATH=build/arm/site qemu-aarch64 -cpu $cpu \\
        -L build/arm/root build/arm/root/usr/bin/python3.11 benchmarks/arm_cpu_models.py \\
        build/ci/se $cpu $runtime
      done; done

Stored: docs/runs/arm-cpu-models/cpu-models.txt.
"""

import sys

import numpy as np

root, cpu, runtime = sys.argv[1:4]
graph = f"{root}/model.int8-cpu.onnx"
x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
if runtime == "onnxruntime":
    import onnxruntime as ort

    version = ort.__version__
    logits = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
else:
    import openvino as ov

    version = ov.__version__.split("-")[0]
    logits = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
print(f"-cpu {cpu}: {runtime} {version} runs, sum |logits| {float(np.abs(logits).sum()):.6g}", flush=True)
