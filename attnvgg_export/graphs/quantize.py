"""Stage: fp32 ONNX + calibration ranges -> int8 Q/DQ graphs, one per runtime.

- int8-trt: TensorRT 11 explicit quantization. Symmetric int8, zero points 0, per-channel
  weights only (axis 0 for Conv and Gemm with transB=1), per-tensor activations, float bias.
- int8-cpu: U8 activations and S8 per-channel weights in 7 bits (|w| <= 64), the form ONNX
  Runtime's x86 kernels fuse into QLinearConv / QGemm, and OpenVINO's IR is made from. On x86
  without VNNI or AMX both runtimes sum pairs of u8 x s8 products in saturating int16
  (`vpmaddubsw`); with 7-bit weights a pair is at most 255 * 64 * 2 = 32,640 < 32,767, so the
  graph computes the same on every CPU, in either runtime and either file format, at full speed
  (docs/precision.md, "int8 on CPUs without VNNI").
Both come from the same cached ranges, so calibration runs once per model and data. The TensorRT
graph keeps 8-bit weights (TensorRT sums exactly); ONNX Runtime reads it exactly with
attnvgg_runtime.readers.cpu.EXACT_INT8.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from attnvgg_export.calibration.calibrate import METHODS, QUANTIZED_OP_TYPES, CalibrationResult
from attnvgg_export.console import quiet
from attnvgg_export.graphs.module_map import keep_only_module_map
from attnvgg_export.models import ToolchainError
from attnvgg_export.verify.structure import tensorrt_qdq_violations
from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.readers.cpu import EXACT_INT8


class QuantizationError(ToolchainError):
    """A quantized graph could not be made, or breaks its runtime's Q/DQ rules."""


class Int8Target(enum.Enum):
    TENSORRT = "int8-trt"
    CPU = "int8-cpu"

    @property
    def filename(self) -> str:
        return f"model.{self.value}.onnx"

    @property
    def weight_bits(self) -> int:
        return 7 if self is Int8Target.CPU else 8

    @property
    def exact_int8_options(self) -> dict[str, str]:
        """The ONNX Runtime session entries that read this graph exactly where int8 pair sums
        saturate (none for 7-bit weights, which cannot saturate)."""
        return dict(EXACT_INT8) if self.weight_bits == 8 else {}


_SETTINGS = {
    Int8Target.TENSORRT: dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                              extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                             "QuantizeBias": False}),
    Int8Target.CPU: dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                         extra_options={"WeightSymmetric": True}),
}


def quantizable_nodes(model_path: Path) -> list[str]:
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm")]


def onnx_to_int8(model_path: Path, out_path: Path, ranges: CalibrationResult, target: Int8Target,
                 nodes_to_exclude: Sequence[str] = (), weight_bits: int | None = None) -> Path:
    """Quantize ``model_path`` with the cached ranges (calibration does not run again).
    ``weight_bits``: 7 or 8, instead of the target's (benchmarks.int8_kernels compares them)."""
    settings = _SETTINGS[target]
    reduce_range = (weight_bits or target.weight_bits) == 7
    with atomic_path(out_path) as tmp, quiet():
        quantize_static(
            str(model_path), str(tmp), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=reduce_range,
            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=METHODS[ranges.method],
            calibration_cache_path=str(ranges.ranges_path), activation_type=settings["activation_type"],
            weight_type=settings["weight_type"], extra_options=dict(settings["extra_options"]))
        model = onnx.load(str(tmp))
        keep_only_module_map(model)
        onnx.save_model(model, str(tmp))
    if target is Int8Target.TENSORRT:
        violations = tensorrt_qdq_violations(out_path)
        if violations:
            out_path.unlink()
            raise QuantizationError(f"{out_path.name} breaks TensorRT's Q/DQ rules: "
                                    + "; ".join(violations[:5]))
    return out_path
