"""Runners turn inputs into outputs; they know nothing of tolerances."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


def run_torch(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


class OnnxRuntimeRunner:
    """An ONNX Runtime CPU session over one model file."""

    def __init__(self, path: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        source = path if isinstance(path, bytes) else str(path)  # bytes: a graph made in memory
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AMX or AVX512-BF16)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRunner:
    """OpenVINO on the CPU over an ONNX graph or an IR (.xml): a second, independent reader.

    ``precision`` is OpenVINO's inference precision hint: "f32" computes what the graph says (an
    fp16 graph's casts included); "bf16" lets OpenVINO run the float layers in bf16, which it
    does by default on CPUs with AMX or AVX512-BF16, so it is always set explicitly here."""

    def __init__(self, path: str | Path, precision: str = "f32", threads: int | None = None) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer([np.ascontiguousarray(batch)])
        return self.request.get_output_tensor(0).data.copy()
