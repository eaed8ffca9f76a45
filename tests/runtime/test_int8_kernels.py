"""int8 is computed exactly on every CPU: the saturation probe, and ONNX Runtime's int8 reads
(the layer fallback's, the gate's, the consumer's) against the Q/DQ graph's own arithmetic.

`make test-isa` runs the `kernels` tests again under `qemu-x86_64 -cpu Haswell`, where ONNX
Runtime and OpenVINO pick their AVX2 kernels (no VNNI) whatever the host has
(ATTNVGG_QEMU_CPU names the emulated CPU there)."""

import os
import platform

import numpy as np
import onnxruntime as ort
import pytest

from attnvgg_export.verify.structure import weights_past_seven_bits
from attnvgg_runtime import classify
from attnvgg_runtime.manifest import read_manifest
from attnvgg_runtime.readers import run_batches
from attnvgg_runtime.readers.cpu import (
    EXACT_INT8,
    PROBE_DEPTH,
    PROBE_EXACT,
    SATURATION_PROBE,
    cpu_model_and_flags,
    int8_products_saturate,
    run_saturation_probe,
)
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.readers.openvino import OpenVinoRunner

pytestmark = pytest.mark.kernels
EMULATED = os.environ.get("ATTNVGG_QEMU_CPU")
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def test_the_probe_saturates_exactly_where_the_cpu_has_no_int8_dot_product():
    if EMULATED:  # qemu: the kernels follow the emulated cpuid; /proc/cpuinfo shows the host's
        assert EMULATED == "Haswell" and int8_products_saturate(), \
            "qemu -cpu Haswell did not switch ONNX Runtime to its AVX2 (saturating) int8 kernels"
    else:
        flags = (cpu_model_and_flags() or ("", set()))[1]
        x86 = platform.machine() in ("x86_64", "AMD64")
        assert int8_products_saturate() == (x86 and not VNNI_FLAGS & flags)
    assert run_saturation_probe(EXACT_INT8) == PROBE_EXACT  # the recorded option makes it exact


def test_the_carried_probe_is_the_graph_it_describes():
    """The box carries the probe as bytes (no onnx there): they are this graph, built by onnx."""
    from onnx import TensorProto, helper

    weights = helper.make_tensor("b", TensorProto.INT8, [PROBE_DEPTH, 1],
                                 np.full(PROBE_DEPTH, 127, np.int8).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_saturation_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, PROBE_DEPTH])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [1, 1])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="attnvgg-export")
    model.ir_version = 8  # onnx 1.23 stamps 14; ONNX Runtime 1.31 reads up to 13
    assert SATURATION_PROBE == model.SerializeToString()


def qdq_reference(path) -> ort.InferenceSession:
    """The graph's arithmetic without any int8 kernel: ONNX Runtime at its basic optimization
    level applies only graph rewrites (constant folding, Q/DQ propagation across pools and
    reshapes), which are the same on every CPU, and runs Quantize, Dequantize and float Conv/Gemm
    one by one; the fused int8 kernels, where CPUs differ, come at the extended level. Exact
    int8 sums equal this up to float rounding at requantization ties."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def build(request):
    if os.environ.get("ATTNVGG_KERNELS_BUILD"):
        path = os.environ["ATTNVGG_KERNELS_BUILD"]
        return read_manifest(path), os.path.dirname(path)
    root = request.getfixturevalue("engines_build")
    return read_manifest(root / "manifest.json"), str(root)


EXACT_TOLERANCE = 2e-3  # float rounding of requantized activations, not int8 error (~0.07)
# ONNX Runtime's fused reading of the TensorRT graph (signed activations, 8-bit weights) on CPUs
# with VNNI or AMX: 4.17e-3 from the graph's unfused Q/DQ arithmetic on the AVX-512 VNNI Zen 4 and
# on the AMX Xeon alike (the same figure to the last digit), with or without
# session.x64quantprecision; on AVX2 with that option, under 2e-3. Where in the fused path it
# enters is not traced (docs/precision.md); the CPU graph (unsigned activations) is exact on both.
# This bound keeps 2.4x over the figure; the saturating kernels measure far past either.
EXACT_TOLERANCE_SIGNED_VNNI = 1e-2


def test_the_tensorrt_graph_is_read_exactly_on_this_cpu(build):
    """8-bit weights (TensorRT's): the graph's Q/DQ arithmetic with the recorded session options,
    on every CPU, within float rounding (2e-3; 1e-2 on VNNI/AMX's signed path, as measured)."""
    manifest, root = build
    path = os.path.join(root, "model.int8-trt.onnx")
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64), dtype=np.float32)
    reference = qdq_reference(path).run(None, {manifest.input["name"]: x})[0]
    tolerance = EXACT_TOLERANCE if int8_products_saturate() else EXACT_TOLERANCE_SIGNED_VNNI
    exact = rel_l2(run_batches(OnnxRuntimeRunner(path, exact_int8=True), x), reference)
    default = rel_l2(run_batches(OnnxRuntimeRunner(path), x), reference)
    print(f"int8-trt against its unfused Q/DQ arithmetic: exact option {exact:.3g}, default {default:.3g}")
    assert exact < tolerance
    if int8_products_saturate():  # the test can fail: the default kernels are not the graph's
        assert default > 2 * EXACT_TOLERANCE
    else:
        assert default < tolerance


def quantized_conv(weight_bits: int, signed_activations: bool, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """One Q/DQ convolution over 64 input channels, as the precision stage writes them: u8
    asymmetric activations (the CPU graph) or s8 symmetric ones (the TensorRT graph), s8
    per-channel weights spanning the full 7 or 8 bits; and an input that fills the activations'
    range. Output in units of its quantization step."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    top = 2 ** (weight_bits - 1) - (weight_bits == 8)  # 64 or 127
    weights = rng.integers(-top, top + 1, (32, 64, 3, 3)).astype(np.int8)
    act_type, zero = (np.int8, 0) if signed_activations else (np.uint8, 0)
    constants = {"w": weights, "w_scale": np.full(32, 0.01, np.float32), "w_zero": np.zeros(32, np.int8),
                 "x_scale": np.array(0.02, np.float32), "x_zero": np.array(zero, act_type),
                 "y_scale": np.array(1.0, np.float32), "y_zero": np.array(zero, act_type)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["out"])]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 32, 16, 16])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    low, high = (-128, 127) if signed_activations else (0, 255)
    x = (rng.integers(low, high + 1, (1, 64, 16, 16)) * 0.02).astype(np.float32)
    return model.SerializeToString(), x


def steps_off(model: bytes, x: np.ndarray, runner) -> np.ndarray:
    """|runner's output - the Q/DQ arithmetic's| in output quantization steps."""
    reference = qdq_reference(model).run(None, {"x": x})[0]
    return np.abs(runner(x) - reference)


def onnxruntime_reader(model: bytes, exact: bool):
    return OnnxRuntimeRunner(model, exact_int8=exact)


def openvino_reader(model: bytes, exact: bool, tmp_path):
    path = tmp_path / "conv.onnx"
    path.write_bytes(model)
    return OpenVinoRunner(path)


@pytest.mark.parametrize("reader", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("weight_bits", [7, 8])
def test_a_cpu_graph_conv_is_exact_with_7_bit_weights_on_this_cpu(reader, weight_bits, tmp_path):
    """The CPU graph's form (u8 activations, s8 weights) read with each runtime's default kernels:
    with 7-bit weights no pair sum can saturate, so every output is the Q/DQ arithmetic's, up to
    one step where float rounding meets a tie; with 8-bit weights a CPU without VNNI is off by
    many steps (the failure this guards against, shown where this CPU has it)."""
    model, x = quantized_conv(weight_bits, signed_activations=False)
    runner = (onnxruntime_reader(model, exact=False) if reader == "onnxruntime"
              else openvino_reader(model, False, tmp_path))
    off = steps_off(model, x, runner)
    if weight_bits == 7 or not int8_products_saturate():
        assert off.max() <= 1 and np.mean(off > 0) < 1e-3
    else:
        assert off.max() > 4


def test_the_tensorrt_graphs_conv_is_exact_with_the_recorded_options_on_this_cpu():
    """The TensorRT graph's form (s8 symmetric activations, 8-bit weights) through ONNX Runtime
    with exact_int8, as the fallback and the gate read it; default kernels saturate without VNNI."""
    model, x = quantized_conv(8, signed_activations=True)
    off = steps_off(model, x, onnxruntime_reader(model, exact=True))
    assert off.max() <= 1 and np.mean(off > 0) < 1e-3
    default = steps_off(model, x, onnxruntime_reader(model, exact=False))
    assert (default.max() > 4) == int8_products_saturate()


def test_the_builds_int8_graphs_have_the_weights_and_options_of_their_form(build):
    manifest, root = build
    assert weights_past_seven_bits(os.path.join(root, "model.int8-cpu.onnx")) == []
    assert weights_past_seven_bits(os.path.join(root, "model.int8-trt.onnx"))  # the check can fail
    options = {a.path: a.exact_int8_session_options for a in manifest.artifacts
               if a.precision == "int8"}
    assert options.pop("model.int8-trt.onnx") == EXACT_INT8
    assert set(options) >= {"model.int8-cpu.onnx", "engines/ort/model.int8-cpu.ort"}
    assert not any(options.values())


def test_the_consumer_reads_int8_as_the_gate_does(build):
    manifest, root = build
    manifest_path = os.path.join(root, "manifest.json")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)
    for path, exact in (("engines/ort/model.int8-cpu.ort", False), ("model.int8-trt.onnx", True)):
        entry = next(a for a in manifest.artifacts if a.path == path)
        run = classify.load_runner(manifest_path, entry, "onnxruntime")
        expected = OnnxRuntimeRunner(os.path.join(root, path), exact_int8=exact)(x)
        np.testing.assert_array_equal(run(x), expected)
