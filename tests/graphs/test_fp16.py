import numpy as np
import onnx
import pytest

from attnvgg_export.console import quiet
from attnvgg_export.graphs.export import build_model
from attnvgg_export.graphs.fp16 import onnx_to_fp16
from attnvgg_export.models.layers import LinearAttention
from attnvgg_export.runtime.eager import run_torch
from attnvgg_export.verify.structure import FP32_OPS
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.verify.measures import compare
from tests.conftest import tiny_config

pytestmark = pytest.mark.numerics


# sa's O(N^2) attention at its largest size: 14 s, in the slow tier
@pytest.mark.parametrize("variant", ["vgg16", "se", "la", pytest.param("sa", marks=pytest.mark.slow)])
def test_fp16_graph_is_finite_and_close_at_the_largest_declared_size(exported, variant, tmp_path):
    manifest_path = exported(variant)
    fp16 = onnx_to_fp16(manifest_path.parent / "model.onnx", tmp_path / "model.fp16.onnx")
    config = tiny_config(variant)
    x = np.random.default_rng(0).standard_normal(
        (2, 3, config.height.max, config.width.max), dtype=np.float32)
    result = compare(OnnxRuntimeRunner(fp16)(x), run_torch(build_model(config)[0], x), x.shape, 1e-2)
    assert result.passed, result.describe()
    graph = onnx.load(str(fp16)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [i for i in graph.initializer if i.name.endswith("weight") or i.dims and len(i.dims) == 4]
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)


# sa: 21.7 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
@pytest.mark.parametrize("variant", ["vgg16", "se", "la", pytest.param("sa", marks=pytest.mark.slow)])
def test_both_readers_compute_the_fp16_graph_within_its_budget(exported, variant, tmp_path):
    """ONNX Runtime and OpenVINO read the same fp16 graph; both must be within the fp16 budget
    of eager at shapes where the adaptive pool's bins are uneven (3x10 and 2x14 feature maps)."""
    from attnvgg_export.verify.budgets import load_tolerances
    from attnvgg_runtime.readers.openvino import OpenVinoRunner
    from attnvgg_runtime.verify.measures import metrics

    fp16 = onnx_to_fp16(exported(variant).parent / "model.onnx", tmp_path / "model.fp16.onnx")
    model = build_model(tiny_config(variant))[0]
    budget = load_tolerances(variant)["fp16"]["rel_l2_max"]
    readers = {"onnxruntime": OnnxRuntimeRunner(fp16), "openvino": OpenVinoRunner(fp16, "f32")}
    for shape in [(2, 3, 96, 320), (1, 3, 64, 448)]:
        if variant == "sa":
            shape = (shape[0], 3, 64, 96)
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        reference = run_torch(model, x)
        for name, runner in readers.items():
            rel_l2 = metrics(runner(x), reference)["rel_l2"]
            assert rel_l2 <= budget, (name, shape, rel_l2)


def test_the_pool_bins_are_integer_arithmetic_in_every_graph(exported, tmp_path):
    """The bin bounds of the adaptive pool must not be float Div + Floor: computed in fp16, and
    by OpenVINO as a multiplication by a rounded reciprocal, floor(21 / 7) became 2."""
    fp16 = onnx_to_fp16(exported("se").parent / "model.onnx", tmp_path / "model.fp16.onnx")
    for path in (exported("se").parent / "model.onnx", fp16):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "Floor" not in ops and "Ceil" not in ops, path


@pytest.mark.parametrize(("variant", "kept_ops"), [
    ("se", {"ReduceMean"}), ("la", {"ReduceSum"}), ("sa", {"Softmax"})])
def test_reductions_and_softmax_stay_in_float32(exported, tmp_path, variant, kept_ops):
    fp16 = onnx_to_fp16(exported(variant).parent / "model.onnx", tmp_path / "model.fp16.onnx")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16)), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    kept = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert {n.op_type for n in kept} == kept_ops
    for node in kept:  # the type must be known, and float32
        assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in convs)


@pytest.mark.slow
def test_full_width_linear_attention_in_fp16_at_448_stays_finite(tmp_path):
    """Stage 1 of full-size VGG16-LA (two 64-channel convs and the attention block), exported and
    converted to fp16, at 448x448: 200,704 tokens, the largest token sums of any block of any
    variant at the largest declared size. (The whole full-size graph is exported once, in
    test_export; this keeps the 448 check to the part where fp16 can overflow.)"""
    import torch

    from attnvgg_export import models

    stage = models.create_model("la").features[:5]
    assert isinstance(stage[4], LinearAttention) and stage[4].out_proj.in_channels == 64
    x = np.random.default_rng(0).standard_normal((1, 3, 448, 448), dtype=np.float32)
    with quiet("torch"):
        program = torch.onnx.export(stage, (torch.from_numpy(x),), None, input_names=["input"],
                                    output_names=["features"], opset_version=18, dynamo=True)
    program.save(str(tmp_path / "stage1.onnx"))
    fp16 = onnx_to_fp16(tmp_path / "stage1.onnx", tmp_path / "stage1.fp16.onnx")
    result = compare(OnnxRuntimeRunner(fp16)(x), run_torch(stage, x), x.shape, 1e-2)
    assert result.finite and result.passed, result.describe()


@pytest.mark.parametrize("variant", ["se", "la"])
def test_fp16_types_inferred_on_the_file_make_the_graph_in_memory_inference_makes(
        exported, variant, tmp_path):
    """onnx_to_fp16 infers tensor types on the file (in memory, onnx serializes the whole model
    first); the graph is byte for byte the one ORT's converter makes with its own inference. The
    source carries no types (onnxsim's graphs do; the unsimplified one kept when onnxsim fails
    may not), so that the inference has something to do."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(exported(variant).parent / "model.onnx"))
    del model.graph.value_info[:]
    source = tmp_path / "untyped.onnx"
    onnx.save_model(model, str(source))
    ours = onnx_to_fp16(source, tmp_path / "model.fp16.onnx")
    theirs = convert_float_to_float16(model, keep_io_types=True,
                                      op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)))
    assert ours.read_bytes() == theirs.SerializeToString()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx", "untyped.onnx"]
