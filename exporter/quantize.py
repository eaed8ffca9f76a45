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
exporter.cpu.EXACT_INT8.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from calibration.calibrate import METHODS, QUANTIZED_OP_TYPES, CalibrationResult
from models import ToolchainError

from .console import quiet
from .cpu import EXACT_INT8
from .export import keep_only_module_map
from .files import atomic_path


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


SEVEN_BIT_MAX = 64  # ONNX Runtime's reduce_range for symmetric int8 weights: [-64, 64]


def weights_past_seven_bits(path: Path) -> list[str]:
    """The int8 weights of a Q/DQ graph that do not fit 7 bits: where an x86 CPU without VNNI
    can saturate (empty: the graph computes the same on every CPU)."""
    graph = onnx.load(str(path)).graph
    constants = _constants(graph)
    found = []
    for node in graph.node:
        weight = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.dtype == np.int8:
            largest = int(np.abs(weight.astype(np.int16)).max())
            if largest > SEVEN_BIT_MAX:
                found.append(f"{node.name}: int8 weights up to {largest}, past 7 bits "
                             f"({SEVEN_BIT_MAX}): pair sums saturate on x86 without VNNI")
    return found


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def tensorrt_qdq_violations(path: Path) -> list[str]:
    """Every way the graph breaks TensorRT 11's explicit-quantization rules (empty: it obeys).

    Symmetric int8 (zero points constant and 0), scales constant and > 0; per-channel only for
    weights, on axis 0 of a Conv weight or of a Gemm B with transB=1 (axis 1 with transB=0);
    activations per-tensor; no int32 DequantizeLinear (quantized bias)."""
    graph = onnx.load(str(path)).graph
    constants = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} {node.name}"
        scale = constants.get(node.input[1])
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
            continue
        if not (scale > 0).all():
            problems.append(f"{where}: scale has values <= 0")
        if zero is None:
            problems.append(f"{where}: zero point is missing or not a constant")
        else:
            if zero.dtype != np.int8:
                problems.append(f"{where}: zero point is {zero.dtype}, not int8")
            if np.any(zero != 0):
                problems.append(f"{where}: zero point is not 0 (asymmetric)")
        data = constants.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.dtype == np.int32:
            problems.append(f"{where}: int32 DequantizeLinear (quantized bias)")
        if scale.size > 1:
            problems += _per_channel_problems(node, where, data, consumers)
    return problems


def _per_channel_problems(node, where, data, consumers) -> list[str]:
    if node.op_type != "DequantizeLinear" or data is None:
        return [f"{where}: per-channel scale on an activation"]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    problems = []
    for consumer in consumers.get(node.output[0], []):
        if consumer.op_type == "Conv" and consumer.input[1] == node.output[0]:
            expected = 0
        elif consumer.op_type == "Gemm" and consumer.input[1] == node.output[0]:
            trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
            expected = 0 if trans_b else 1
        else:
            problems.append(f"{where}: per-channel weight feeds {consumer.op_type} "
                            f"{consumer.name}, which TensorRT only allows for Conv/Gemm weights")
            continue
        if axis != expected:
            problems.append(f"{where}: per-channel axis {axis}, TensorRT needs {expected} "
                            f"for {consumer.op_type} {consumer.name}")
    return problems


def qdq_types(path: Path) -> dict[str, set[str]]:
    """The int types of activation and weight quantization in a Q/DQ graph."""
    graph = onnx.load(str(path)).graph
    constants = _constants(graph)
    found: dict[str, set[str]] = {"activation": set(), "weight": set()}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2:
            found["activation"].add(str(constants[node.input[2]].dtype))
        elif node.op_type == "DequantizeLinear" and node.input[0] in constants:
            found["weight"].add(str(constants[node.input[0]].dtype))
    return found
