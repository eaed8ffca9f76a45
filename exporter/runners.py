"""Runners turn inputs into outputs; they know nothing of tolerances. torch is imported by the
eager runner alone, so the runtime runners start without it (the emulated readers of
exporter.emulated run them under qemu, where importing torch costs a minute)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cpu import exact_int8_options

if TYPE_CHECKING:
    from torch import nn


def run_torch(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    """Eager PyTorch as a CPU deployment runs it: inference mode, channels-last (NHWC), the
    layout oneDNN's convolutions are fastest in (VGG16-SE: 1.26x at 224 batch 8, 1.61x at 448
    batch 2; python -m benchmarks.eager_settings); outputs equal NCHW's to float rounding
    (tests/exporter/test_export.py). The model's 4-D weights are converted in place, once."""
    import torch

    model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)).numpy()


class OnnxRuntimeRunner:
    """An ONNX Runtime CPU session over one model file. ``exact_int8``: int8 products summed
    exactly on every CPU (exporter.cpu.exact_int8_options, set only where this CPU's int8 pair
    sums saturate), as TensorRT sums them: how the TensorRT graph, with its 8-bit weights, is
    read. The CPU graph's 7-bit weights cannot saturate and need no option."""

    def __init__(self, path: str | Path | bytes, threads: int | None = None,
                 exact_int8: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        for key, value in (exact_int8_options() if exact_int8 else {}).items():
            options.add_session_config_entry(key, value)
        source = path if isinstance(path, bytes) else str(path)  # bytes: a graph made in memory
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


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
