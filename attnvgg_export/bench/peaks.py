"""What this machine can do at best: GEMM throughput of ONNX Runtime (fp32, int8), OpenVINO
(fp32, int8) and torch (bf16). The limit a row's "% of peak" is a share of is the best of these
and of the rows themselves (attnvgg_export.report.report.bench_limits): a runtime's fused
convolutions can beat one library's GEMM."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from attnvgg_export.runtime.eager import bf16_matmul
from attnvgg_runtime.readers import runtime_module
from attnvgg_runtime.timing import BenchConfig, latency


def _gemm_model(int8: bool, n: int) -> ModelProto:
    a_type, b_type = (TensorProto.UINT8, TensorProto.INT8) if int8 else (TensorProto.FLOAT,) * 2
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("a", a_type, [n, n]),
                         helper.make_tensor_value_info("b", b_type, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32 if int8 else TensorProto.FLOAT,
                                       [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # onnx 1.23 stamps 14; ONNX Runtime 1.31 reads up to 13
    return model


def gemm_peak_gmacs(n: int = 1024, seconds: float = 2.0) -> dict[str, float]:
    """fp32 and int8 (U8S8) GEMM throughput of ONNX Runtime on this machine."""
    ort = runtime_module("onnxruntime", "pip install onnxruntime-gpu (or onnxruntime)")
    peaks = {}
    rng = np.random.default_rng(0)
    for name, int8 in (("fp32", False), ("int8", True)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(_gemm_model(int8, n).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        if int8:
            feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                     "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
        else:
            feeds = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
        result = latency(lambda s=session, f=feeds: s.run(None, f),
                         BenchConfig(warmup=2, min_iterations=5, seconds_per_case=seconds))
        peaks[name] = n**3 / (result["p50_ms"] / 1000) / 1e9
    return peaks


def _weights_gemm_model(n: int, int8: bool) -> ModelProto:
    """A float input A times a constant B, as a network's layers are: float32, or A quantized to
    u8 and B int8 in Q/DQ form, which OpenVINO runs as an int8 GEMM."""
    rng = np.random.default_rng(0)
    if int8:
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        nodes = [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["qa"]),
                 helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"]),
                 helper.make_node("DequantizeLinear", ["b", "sb"], ["db"]),
                 helper.make_node("MatMul", ["da", "db"], ["c"])]
        inits = [helper.make_tensor("sa", TensorProto.FLOAT, [], [0.02]),
                 helper.make_tensor("za", TensorProto.UINT8, [], [128]),
                 helper.make_tensor("sb", TensorProto.FLOAT, [], [0.01]),
                 helper.make_tensor("b", TensorProto.INT8, [n, n], b.tobytes(), raw=True)]
    else:
        b = rng.standard_normal((n, n), dtype=np.float32)
        nodes = [helper.make_node("MatMul", ["a", "b"], ["c"])]
        inits = [helper.make_tensor("b", TensorProto.FLOAT, [n, n], b.tobytes(), raw=True)]
    graph = helper.make_graph(nodes, "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def openvino_gemm_peak_gmacs(n: int = 1024, seconds: float = 2.0) -> dict[str, float]:
    """fp32 and int8 GEMM throughput of OpenVINO's CPU plugin (oneDNN) on this machine."""
    from attnvgg_runtime.readers.openvino import OpenVinoRunner

    peaks = {}
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="gemm-") as tmp:
        for name in ("fp32", "int8"):
            path = Path(tmp) / f"{name}.onnx"
            path.write_bytes(_weights_gemm_model(n, name == "int8").SerializeToString())
            runner = OpenVinoRunner(path)
            result = latency(lambda r=runner: r(a),
                             BenchConfig(warmup=2, min_iterations=5, seconds_per_case=seconds))
            peaks[name] = n**3 / (result["p50_ms"] / 1000) / 1e9
    return peaks


def torch_bf16_peak_gmacs(n: int = 1024, seconds: float = 2.0) -> float:
    """bf16 GEMM throughput of torch (oneDNN: AMX or AVX512-BF16) on this machine."""
    result = latency(bf16_matmul(n), BenchConfig(warmup=2, min_iterations=5, seconds_per_case=seconds))
    return n**3 / (result["p50_ms"] / 1000) / 1e9
