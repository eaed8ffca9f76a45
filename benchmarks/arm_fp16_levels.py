"""Whether ONNX Runtime can be made to compute the fp16 graph with float32 arithmetic on an ARM
core with fp16 arithmetic: the fp16 graph's rel L2 against eager on the first 2 held-out golden
images, at every graph optimization level and with `session.enable_cpu_fp16` set to 0. Runs on
the emulated box (make test-arm sets it up); needs only onnxruntime and attnvgg_runtime.

    for cpu in neoverse-n1 cortex-a72; do \\
      PYTHONPATH=build/arm/site qemu-aarch64 -cpu $cpu \\
        -L build/arm/root build/arm/root/usr/bin/python3.11 \\
        benchmarks/arm_fp16_levels.py build/ci/se $cpu; done

Stored: docs/runs/arm-fp16-levels/fp16-levels.txt.
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from attnvgg_runtime.manifest import read_manifest
from attnvgg_runtime.verify.golden import read_golden

root, cpu = Path(sys.argv[1]), sys.argv[2]
batches, reference = read_golden(root, read_manifest(root / "manifest.json").golden)["heldout"]
images, reference = batches[0][:2], reference[:2]
for level, config in (("ORT_ENABLE_ALL", {}), ("ORT_ENABLE_BASIC", {}), ("ORT_DISABLE_ALL", {}),
                      ("ORT_ENABLE_ALL", {"session.enable_cpu_fp16": "0"})):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(root / "model.fp16.onnx"), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    outputs = session.run(None, {"input": images})[0]
    error = np.linalg.norm(outputs - reference) / np.linalg.norm(reference)
    print(f"{cpu} onnxruntime {ort.__version__} {level} {config or ''}: fp16 rel L2 against eager "
          f"{error:.5f} ({time.perf_counter() - start:.1f} s under qemu)", flush=True)
