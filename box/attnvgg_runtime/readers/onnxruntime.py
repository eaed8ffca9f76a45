"""The ONNX Runtime reader (CPUExecutionProvider), over an ONNX graph or an .ort model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from attnvgg_runtime.readers import runtime_module
from attnvgg_runtime.readers.cpu import exact_int8_options

INSTALL_HINT = ("install the runtime wheel's [onnxruntime] extra (pip install onnxruntime; onnxruntime-gpu "
                "on Linux x86_64)")
# The level an .ort model's graph is optimized at when it is saved (attnvgg_export.convert.ort_format):
# QDQ groups fused into QLinearConv/QGemm, Conv+activation fusion, constant folding. "all" would
# add an NCHWc layout specific to the saving machine's CPU.
ORT_SAVED_LEVEL = "ORT_ENABLE_EXTENDED"


class OnnxRuntimeRunner:
    """An ONNX Runtime CPU session over one model file. ``exact_int8``: int8 products summed
    exactly on every CPU (attnvgg_runtime.readers.cpu.exact_int8_options, set only where this CPU's int8 pair
    sums saturate), as TensorRT sums them: how the TensorRT graph, with its 8-bit weights, is
    read. The CPU graph's 7-bit weights cannot saturate and need no option. ``optimization``: a
    graph optimization level by name (ORT_SAVED_LEVEL: a graph read as its .ort was saved);
    ONNX Runtime's default (all) where None. ``memory_arena`` False: buffers freed as each
    run ends rather than kept in a growing arena, the verifiers' choice (at full size the fp16
    graph at batch 32 peaks 0.45 GB lower, for 1-20% more time per batch); the same numbers."""

    def __init__(self, path: str | Path | bytes, threads: int | None = None,
                 exact_int8: bool = False, optimization: str | None = None,
                 memory_arena: bool = True) -> None:
        ort = runtime_module("onnxruntime", INSTALL_HINT)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = memory_arena
        if optimization:
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
        for key, value in (exact_int8_options() if exact_int8 else {}).items():
            options.add_session_config_entry(key, value)
        source = path if isinstance(path, bytes) else str(path)  # bytes: a graph made in memory
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]
