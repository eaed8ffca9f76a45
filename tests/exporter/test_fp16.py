import numpy as np
import onnx
import pytest

from exporter.compare import compare
from exporter.export import build_model
from exporter.fp16 import FP32_OPS, onnx_to_fp16
from exporter.runners import OnnxRuntimeRunner, run_torch
from tests.conftest import tiny_config


@pytest.mark.parametrize("variant", ["vgg16", "se", "la", "sa"])
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


def test_reductions_and_softmax_stay_in_float32(exported, tmp_path):
    fp16 = onnx_to_fp16(exported("sa").parent / "model.onnx", tmp_path / "sa.fp16.onnx")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    kept = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert {n.op_type for n in kept} == {"Softmax"}
    for node in kept:
        assert types.get(node.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT


@pytest.mark.slow
def test_full_size_la_fp16_at_448_stays_finite(tmp_path):
    """The full-size linear attention at its largest declared size: 200,704 tokens in stage 1."""
    from exporter.export import ExportConfig, batch_range, export_to_folder, image_range

    config = ExportConfig("la", batch=batch_range(1, 1, 2), height=image_range("height", 224, 224, 448),
                          width=image_range("width", 224, 224, 448))
    manifest = export_to_folder(config, tmp_path / "la", log=lambda *_: None)
    fp16 = onnx_to_fp16(manifest.parent / "model.onnx", tmp_path / "la.fp16.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 448, 448), dtype=np.float32)
    result = compare(OnnxRuntimeRunner(fp16)(x), run_torch(build_model(config)[0], x), x.shape, 1e-2)
    assert result.finite and result.passed, result.describe()
