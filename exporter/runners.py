"""Runners turn inputs into outputs; they know nothing of tolerances."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


def run_torch(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    """Eager PyTorch as a CPU deployment runs it: inference mode, channels-last (NHWC), the
    layout oneDNN's convolutions are fastest in (VGG16-SE: 1.26x at 224 batch 8, 1.61x at 448
    batch 2; python -m benchmarks.eager_settings); outputs equal NCHW's to float rounding
    (tests/exporter/test_export.py). The model's 4-D weights are converted in place, once."""
    model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return model(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)).numpy()


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


def cpu_model_and_flags() -> tuple[str, set[str]] | None:
    """The CPU's model name and ISA flags from /proc/cpuinfo; None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", ""), set(fields.get("flags", "").split())


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below any int8 dot-product instruction (VNNI, AMX)
_NO_VNNI_CAPS = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
_NO_BF16_CAPS = _NO_VNNI_CAPS | {"AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI"}


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AMX or AVX512-BF16). Its
    capability list ignores a ONEDNN_MAX_CPU_ISA cap below bf16, under which it then refuses the
    bf16 hint, so the cap is read too."""
    import openvino as ov

    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_BF16_CAPS:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_int8_has_vnni() -> bool:
    """Whether OpenVINO's CPU plugin multiplies int8 with VNNI or AMX here. Without them oneDNN
    computes signed int8 activations through u8 x s8 pairs summed in int16 (vpmaddubsw), which
    saturate: the int8-trt graph of the CI build measured rel L2 0.075 against fp32 with VNNI and
    0.144 with ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE (docs/precision.md). Unsigned activations
    (the int8-cpu graph) stay within 0.067-0.076 either way."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_VNNI_CAPS:
        return False
    info = cpu_model_and_flags()
    return info is None or bool(_VNNI_FLAGS & info[1])  # not Linux: assume a current CPU


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
