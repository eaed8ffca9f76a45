"""Stage: fp32 ONNX -> fp16 ONNX for GPU runtimes (TensorRT 11 builds what the graph says).

float32 input and output by default, so callers feed the same tensors as to the fp32 graph.
Kept in float32: reductions over all tokens or pixels (ReduceMean in SE, ReduceSum in linear
attention: a sum over 50,176 positions overflows fp16's 65,504) and Softmax (its normaliser is
such a sum too), plus the shape arithmetic of the export-safe pool.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from attnvgg_export.graphs.onnx_file import save_model_streamed
from attnvgg_export.verify.structure import FP32_OPS


def onnx_to_fp16(source: Path, target: Path, keep_io_types: bool = True) -> Path:
    with tempfile.TemporaryDirectory(dir=Path(target).parent, prefix=".fp16-") as tmp:
        # types of every tensor, inferred on the file: in memory onnx would serialize the whole
        # model first (a 550 MB VGG16: seconds)
        inferred = Path(tmp) / "inferred.onnx"
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        model = onnx.load(str(inferred))
    converted = convert_float_to_float16(
        model, keep_io_types=keep_io_types, disable_shape_infer=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)))
    return save_model_streamed(converted, Path(target))
