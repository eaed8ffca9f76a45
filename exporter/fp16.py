"""Stage: fp32 ONNX -> fp16 ONNX for GPU runtimes (TensorRT 11 builds what the graph says).

float32 input and output by default, so callers feed the same tensors as to the fp32 graph.
Kept in float32: reductions over all tokens or pixels (ReduceMean in SE, ReduceSum in linear
attention: a sum over 50,176 positions overflows fp16's 65,504) and Softmax (its normaliser is
such a sum too), plus the shape arithmetic of the export-safe pool.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from .files import atomic_path

FP32_OPS = ("ReduceMean", "ReduceSum", "Softmax")


def onnx_to_fp16(source: Path, target: Path, keep_io_types: bool = True) -> Path:
    model = onnx.load(str(source))
    converted = convert_float_to_float16(
        model, keep_io_types=keep_io_types,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)))
    with atomic_path(target) as tmp:
        onnx.save_model(converted, str(tmp))
    return target
