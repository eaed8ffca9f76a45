"""What a graph's structure must obey, whatever its numbers on the gate's images: TensorRT's
explicit-quantization rules for the TensorRT int8 graph, 7-bit weights for the CPU int8 graph,
float32 cast islands for the fp16 graph. onnx and numpy only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from attnvgg_runtime.manifest import Artifact

# ops the fp16 graph keeps in float32: reductions over every pixel or token (ReduceMean in SE,
# ReduceSum in linear attention: a sum over 50,176 positions overflows fp16's 65,504) and
# Softmax, whose normaliser is such a sum too (attnvgg_export.graphs.fp16 blocks them)
FP32_OPS = ("ReduceMean", "ReduceSum", "Softmax")


def static_violations(path: Path, artifact: Artifact) -> list[str]:
    """What a graph's structure must obey, whatever its numbers on these images: TensorRT's Q/DQ
    rules for the TensorRT int8 graph, 7-bit weights for the CPU int8 graph (else x86 CPUs
    without VNNI saturate, and this machine's verdict would not hold on them), float32 cast
    islands for the fp16 graph."""
    if artifact.format != "onnx":
        return []
    checks = {("int8", True): tensorrt_qdq_violations,
              ("int8", False): weights_past_seven_bits,  # else x86 without VNNI saturates
              ("fp16", True): fp16_violations}
    check = checks.get((artifact.precision, artifact.target == "tensorrt"))
    if check is None:
        return []
    try:
        found = check(path)
    except Exception:  # a graph that does not load fails through its reader
        return []
    return [f"graph structure: {v}" for v in found[:5]] + (
        [f"graph structure: and {len(found) - 5} more"] if len(found) > 5 else [])


def activation_type(path: Path) -> str:
    """An int8 graph's activation type, "int8" or "uint8", as the manifest records it
    (`activations`): a box decides with it, without onnx, whether its CPU reads the graph right."""
    types = qdq_types(path)["activation"]
    if len(types) != 1:
        raise ValueError(f"{path}: activations quantized to {sorted(types)}, expected one type")
    return types.pop()


def fp16_violations(path: Path) -> list[str]:
    """Every op of FP32_OPS that does not compute in float32 (its input or output typed fp16):
    the cast islands that keep sums over every pixel or token out of fp16's range."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types |= {t.name: t.data_type for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type in FP32_OPS:
            for name in (node.input[0], node.output[0]):
                if types.get(name) != onnx.TensorProto.FLOAT:
                    kind = onnx.TensorProto.DataType.Name(types[name]) if name in types else "unknown"
                    problems.append(f"{node.op_type} {node.name} computes on {name} as {kind}, "
                                    f"not FLOAT: its cast island is missing")
    return problems


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
