import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnvgg_export.calibration.calibrate import calibrate
from attnvgg_export.calibration.data import ImageSet
from attnvgg_export.graphs.export import build_model
from attnvgg_export.graphs.fallback import FallbackGoal, quantize_with_fallback
from attnvgg_export.graphs.quantize import Int8Target, onnx_to_int8, quantizable_nodes
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_export.verify.cases import ShapeCase
from attnvgg_export.verify.structure import qdq_types, tensorrt_qdq_violations, weights_past_seven_bits
from attnvgg_runtime.readers import run_batches
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return ImageSet(rng.standard_normal((24, 3, 64, 64), dtype=np.float32), None, "noise")


@pytest.fixture(scope="module")
def quantized(exported, images, tmp_path_factory):
    """{variant: {target: path}} for tiny se/la/sa int8 graphs."""
    out = {}
    for variant in ("se", "la", "sa"):
        fp32 = exported(variant).parent / "model.onnx"
        folder = tmp_path_factory.mktemp(f"q-{variant}")
        ranges = calibrate(fp32, images, folder / "calib", "minmax")
        out[variant] = {t: onnx_to_int8(fp32, folder / t.filename, ranges, t) for t in Int8Target}
    return out


@pytest.mark.parametrize("variant", ["se", "la", "sa"])
def test_tensorrt_graph_obeys_the_tensorrt_rules(quantized, variant):
    path = quantized[variant][Int8Target.TENSORRT]
    assert tensorrt_qdq_violations(path) == []
    assert qdq_types(path) == {"activation": {"int8"}, "weight": {"int8"}}
    graph = onnx.load(str(path)).graph
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear"
                   and numpy_helper.to_array(next(i for i in graph.initializer
                                                  if i.name == n.input[1])).size > 1]
    assert per_channel, "weights must be per-channel"


def test_cpu_graph_is_u8_activations_s8_weights_and_fuses(quantized, tmp_path):
    path = quantized["se"][Int8Target.CPU]
    assert qdq_types(path) == {"activation": {"uint8"}, "weight": {"int8"}}
    assert tensorrt_qdq_violations(path)  # asymmetric u8: not for TensorRT
    # 7-bit weights: no u8 x s8 pair sum can saturate on x86 without VNNI; TensorRT's are 8-bit
    assert weights_past_seven_bits(path) == []
    assert weights_past_seven_bits(quantized["se"][Int8Target.TENSORRT])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = len([n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"])
    assert ops.count("QLinearConv") == convs and "Conv" not in ops


def _qdq_graph(tmp_path, *, zero_point=0, zp_type=TensorProto.INT8, weight_scales=(0.1, 0.2),
               axis=0, activation_scales=(0.05,), bias_int32=False):
    """Input -> Q/DQ -> Conv(weight DQ [, bias DQ]) -> output, built by hand."""
    w = np.ones((2, 3, 1, 1), np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.array(weight_scales, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(len(weight_scales), np.int8), "w_zp"),
        numpy_helper.from_array(np.array(activation_scales, np.float32).reshape(
            () if len(activation_scales) == 1 else (-1,)), "x_scale"),
        helper.make_tensor("x_zp", zp_type, [], [zero_point]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w",
                         axis=axis),
    ]
    conv_inputs = ["xd", "wd"]
    if bias_int32:
        inits += [numpy_helper.from_array(np.ones(2, np.int32), "b_q"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"),
                  numpy_helper.from_array(np.array(0, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["bd"],
                                      name="dq_b"))
        conv_inputs.append("bd")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="conv"))
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # onnx stamps 14, which ONNX Runtime 1.31 refuses
    path = tmp_path / "qdq.onnx"
    onnx.save(model, str(path))
    return path


def test_checker_accepts_a_valid_hand_built_graph(tmp_path):
    assert tensorrt_qdq_violations(_qdq_graph(tmp_path)) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"zero_point": 3}, "zero point is not 0"),
    ({"zero_point": 0, "zp_type": TensorProto.UINT8}, "zero point is uint8"),
    ({"weight_scales": (0.1, 0.0)}, "scale has values <= 0"),
    ({"axis": 1}, "per-channel axis 1, TensorRT needs 0"),
    ({"activation_scales": (0.1, 0.2, 0.3)}, "per-channel scale on an activation"),
    ({"bias_int32": True}, "int32 DequantizeLinear"),
])
def test_checker_catches_each_rule(tmp_path, kwargs, message):
    violations = tensorrt_qdq_violations(_qdq_graph(tmp_path, **kwargs))
    assert any(message in v for v in violations), violations


@pytest.mark.numerics
@pytest.mark.parametrize("metric", ["margin", "cosine"])
def test_fallback_keeps_sensitive_layers_in_float_until_the_target(exported, images, tmp_path, metric):
    fp32 = exported("se").parent / "model.onnx"
    ranges = calibrate(fp32, images, tmp_path / "calib", "minmax")
    tuning = images.images[:12]
    cases = {"tuning": ShapeCase(tuning, None, 8), "1x3x96x96": ShapeCase(
        np.ascontiguousarray(np.resize(tuning, (8, 3, 96, 96))), None, 1)}
    references = {n: run_batches(OnnxRuntimeRunner(fp32), c.images, c.batch) for n, c in cases.items()}
    out = tmp_path / "int8.onnx"
    measure = FallbackGoal(metric, 1.0, cases, references, load_tolerances("se")["int8"], False)
    plain, _ = measure.score(OnnxRuntimeRunner(onnx_to_int8(fp32, out, ranges, Int8Target.CPU)))
    # reachable only by keeping some layers in float
    target = plain * 1.3 if metric == "margin" else 1 - (1 - plain) / 4
    goal = FallbackGoal(metric, target, cases, references, load_tolerances("se")["int8"], False)
    report = quantize_with_fallback(fp32, out, ranges, Int8Target.CPU, goal,
                                    build_model(tiny_config("se"))[0],
                                    max_fallback=4, log=lambda *_: None)
    assert report.initial == pytest.approx(plain)
    assert 1 <= len(report.fallen_back) <= 4
    assert all(f["node"] in quantizable_nodes(fp32) for f in report.fallen_back)
    assert report.final > report.initial
    final, worst = goal.score(OnnxRuntimeRunner(out))
    assert final == pytest.approx(report.final)  # the file on disk is the reported graph
    assert worst == report.worst_case and worst in cases
    kept_float = {f["node"] for f in report.fallen_back}
    graph = onnx.load(str(out)).graph
    weights = {n.name: n.input[1] for n in graph.node if n.name in kept_float}
    assert set(weights) == kept_float  # every layer kept in float is still in the graph
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert set(weights.values()) <= float_weights  # fed by a float weight, not a DequantizeLinear
    quantized = [n for n in graph.node if n.op_type == "Conv" and n.name not in kept_float]
    assert quantized and all(w.input[1] not in float_weights for w in quantized)


@pytest.mark.parametrize("variant", ["se", "la", "sa"])
def test_calibration_collects_exactly_the_tensors_that_get_a_qdq_pair(quantized, exported, variant):
    from attnvgg_export.calibration.calibrate import candidate_tensors

    wanted = set(candidate_tensors(exported(variant).parent / "model.onnx"))
    for path in quantized[variant].values():
        graph = onnx.load(str(path)).graph
        got = {n.input[0].removesuffix("_QuantizeLinear_Input") for n in graph.node
               if n.op_type == "QuantizeLinear"}
        assert got == wanted, (path.name, sorted(got ^ wanted))
