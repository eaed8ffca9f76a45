"""Stage: ONNX -> ORT format models for ONNX Runtime on CPU edge boxes (engines/ort/).

ORT format is what ONNX Runtime's edge deployment loads (the minimal/mobile builds read only it;
full builds read it too). Graph optimizations are applied once here, at the "extended" level:
QDQ node groups fused into QLinearConv/QGemm, Conv+activation fusion, constant folding. The
"all" level is not used because its NCHWc layout transform is specific to this machine's CPU.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.readers.onnxruntime import ORT_SAVED_LEVEL

ORT_OPTIMIZATION = getattr(ort.GraphOptimizationLevel, ORT_SAVED_LEVEL)


def onnx_to_ort(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ORT_OPTIMIZATION
        options.optimized_model_filepath = str(tmp)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target
