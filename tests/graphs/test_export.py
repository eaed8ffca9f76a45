import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from attnvgg_export import models
from attnvgg_export.graphs import export as export_stage
from attnvgg_export.graphs.export import (
    EXPORT_TOLERANCE,
    ExportConfig,
    VerificationError,
    batch_range,
    build_model,
    export_model,
    export_to_folder,
    image_range,
    verification_shapes,
)
from attnvgg_export.runtime.eager import model_from_manifest, run_torch
from attnvgg_runtime.files import OutputError
from attnvgg_runtime.manifest import Manifest, sha256_file
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.verify.measures import compare
from tests.conftest import gate_range, tiny_config


def _quiet(*_):
    pass


def _check_against_eager(graph, model, shapes, seed=7):
    """An independent re-check: ORT on the graph file against eager, at the given shapes."""
    runner = OnnxRuntimeRunner(graph)
    rng = np.random.default_rng(seed)
    results = []
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        results.append(compare(runner(x), run_torch(model, x), shape, EXPORT_TOLERANCE))
    return results


# sa's O(N^2) attention at every corner of its range: 17-23 s, in the slow tier
@pytest.mark.parametrize("variant", ["vgg16", "se", "la", pytest.param("sa", marks=pytest.mark.slow)])
def test_every_variant_exports_and_matches_eager_across_its_range(exported, variant):
    manifest = json.loads(exported(variant).read_text())
    shapes = [tuple(c["shape"]) for c in manifest["parity"]["onnx-fp32-vs-eager"]["checks"]]
    assert len(shapes) >= 4
    assert any(s[0] > 1 for s in shapes)  # batch > 1
    assert any(s[2] != s[3] for s in shapes)  # non-square
    assert any(224 not in s[2:] for s in shapes)  # non-224
    assert manifest["export"]["simplified"] is True
    results = _check_against_eager(exported(variant).parent / "model.onnx",
                                   model_from_manifest(Manifest.from_json(manifest)), shapes)
    assert all(r.passed for r in results), [r.describe() for r in results]


@pytest.mark.parametrize("variant", ["vgg16", "se", "la", "sa"])
def test_eager_references_channels_last_are_eager_nchw(tiny, variant):
    """run_torch runs eager channels-last (oneDNN's fast layout); every variant's reshapes and
    attention read it as NCHW would, to float rounding."""
    model = tiny(variant)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96), dtype=np.float32)
    with torch.inference_mode():
        nchw = model(torch.from_numpy(x)).numpy()
    ours = run_torch(model, x)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(
        memory_format=torch.channels_last)
    assert np.linalg.norm(ours - nchw) <= 1e-5 * np.linalg.norm(nchw)


def test_the_recheck_and_the_export_verification_catch_a_graph_off_by_0_1_percent(exported, tmp_path):
    """The negative of the test above: one conv weight x1.001 is caught by both."""
    manifest = json.loads(exported("se").read_text())
    model = onnx.load(str(exported("se").parent / "model.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.001, weight.name))
    onnx.save(model, str(tmp_path / "off.onnx"))
    eager = model_from_manifest(Manifest.from_json(manifest))
    shapes = [(2, 3, 64, 96)]
    assert not any(r.passed for r in _check_against_eager(tmp_path / "off.onnx", eager, shapes))
    x = np.random.default_rng(0).standard_normal(shapes[0], dtype=np.float32)
    references = {shapes[0]: (x, run_torch(eager, x))}
    outputs = export_stage.run_references(OnnxRuntimeRunner(tmp_path / "off.onnx"), references, "g")
    with pytest.raises(VerificationError, match="differs from eager PyTorch at 1 of 1 shapes"):
        export_stage.verify_onnx(outputs, references, EXPORT_TOLERANCE, "the graph")


def test_exported_graph_has_symbolic_batch_height_width(exported):
    path = exported("se").parent / "model.onnx"
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert graph.input[0].name == "input" and graph.output[0].name == "logits"
    assert dims == ["batch", 3, "height", "width"]
    onnx.checker.check_model(str(path), full_check=True)


def test_onnx_matches_eager_at_a_shape_outside_the_verified_set(exported):
    manifest_path = exported("la")
    model, _ = build_model(tiny_config("la"))
    x = np.random.default_rng(5).standard_normal((4, 3, 96, 416), dtype=np.float32)
    out = OnnxRuntimeRunner(manifest_path.parent / "model.onnx")(x)
    np.testing.assert_allclose(out, run_torch(model, x), rtol=1e-4, atol=1e-4 * np.abs(out).max())


def test_manifest_records_the_contract(exported):
    manifest_path = exported("se")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["variant"] == "se" and manifest["num_classes"] == 10
    assert manifest["input"] == {"name": "input", "dtype": "float32",
                                 "shape": ["batch", 3, "height", "width"]}
    assert manifest["dynamic"]["batch"] == {"min": 1, "opt": 1, "max": 8}  # as declared (gate_range)
    assert manifest["dynamic"]["height"] == {"min": 32, "opt": 224, "max": 256, "multiple_of": 32}
    default = ExportConfig("se")  # what is declared when nothing is
    assert (default.batch.min, default.batch.opt, default.batch.max) == (1, 1, 32)
    assert (default.height.min, default.height.opt, default.height.max) == (32, 224, 448)
    assert (default.width.min, default.width.opt, default.width.max) == (32, 224, 448)
    assert "seeded default initialization" in manifest["weights"]
    [artifact] = manifest["artifacts"]
    assert artifact["path"] == "model.onnx" and artifact["format"] == "onnx"
    assert artifact["sha256"] == sha256_file(manifest_path.parent / "model.onnx")
    assert manifest["preprocessing"]["crop"] == [224, 224]
    assert {"torch", "onnx", "onnxruntime-gpu"} <= set(manifest["versions"])


def test_se_block_adds_no_shape_chains(exported):
    """SE is mean -> 1x1 convs -> gate: the graph has the pool's Shape ops and no more."""
    def shape_ops(variant):
        graph = onnx.load(str(exported(variant).parent / "model.onnx")).graph
        return sum(n.op_type in ("Shape", "Gather", "Concat", "Expand") for n in graph.node)

    assert shape_ops("se") == shape_ops("vgg16")


def test_export_is_byte_identical_for_the_same_inputs(exported, tmp_path):
    again = export_to_folder(tiny_config("se", **gate_range()), tmp_path / "se", log=_quiet)
    first = exported("se").parent / "model.onnx"
    assert sha256_file(again.parent / "model.onnx") == sha256_file(first)


def test_the_exported_file_says_what_it_takes_and_names(exported):
    """The fp32 graph carries its metadata (attnvgg_runtime.metadata): what ONNX Runtime reads of
    it is what the manifest says, and the box's reader of the file's bytes reads the same."""
    from attnvgg_runtime.metadata import describe, onnx_metadata, read_keys, session_metadata

    manifest_path = exported("se")
    manifest = Manifest.from_json(json.loads(manifest_path.read_text()))
    graph = manifest_path.parent / "model.onnx"
    read = session_metadata(OnnxRuntimeRunner(graph).session)
    assert {k: read[k] for k in describe(manifest)} == describe(manifest)
    assert onnx_metadata(graph.read_bytes()) == read  # the module map and ours, nothing else
    keys = read_keys(read)
    assert keys["classes"] == [str(i) for i in range(manifest.num_classes)]
    assert keys["input"]["dtype"] == "float32" and keys["input"]["layout"] == "NCHW"
    assert keys["preprocessing"]["mean"] == list(manifest.preprocessing["mean"])
    assert keys["preprocessing"]["crop"] == list(manifest.preprocessing["crop"])


def test_plain_adaptive_pool_export_is_rejected(tmp_path):
    """The known failure: torch.onnx bakes nn.AdaptiveAvgPool2d's window from the example."""
    config = tiny_config("vgg16", height=image_range("height", 32, 224, 448))
    model, weights = build_model(config)
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    with pytest.raises((VerificationError, export_stage.ExportError)) as err:
        export_model(model, config, tmp_path, weights, log=_quiet)
    assert isinstance(err.value, VerificationError), err.value  # it exports, then fails the check
    # ORT either computes garbage or refuses the baked window; both name the failing shape
    assert "differs from eager PyTorch" in str(err.value) or "fails to run at shape" in str(err.value)
    assert "x3x" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing that looks finished, no temporary left


def test_interrupted_export_leaves_nothing_finished(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_stage, "verify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_to_folder(tiny_config("vgg16"), tmp_path, log=_quiet)
    assert list(tmp_path.iterdir()) == []


def test_onnxsim_failure_keeps_the_verified_unsimplified_graph(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(export_stage, "simplify_onnx", broken)
    lines = []
    manifest = json.loads(export_to_folder(tiny_config("vgg16"), tmp_path, log=lines.append)
                          .read_text())
    assert manifest["export"]["simplified"] is False
    assert "kept the unsimplified graph" in manifest["export"]["simplify_note"]
    assert any("simulated onnxsim crash" in line for line in lines)
    assert (tmp_path / "model.onnx").is_file()


def test_verification_shapes_stay_inside_the_declared_range():
    config = tiny_config("se", batch=batch_range(1, 4, 16),
                         height=image_range("height", 64, 128, 320))
    shapes = verification_shapes(config)
    assert len(shapes) >= 4
    for n, _, h, w in shapes:
        assert 1 <= n <= 16 and 64 <= h <= 320 and 32 <= w <= 448 and h % 32 == w % 32 == 0


@pytest.mark.parametrize(("make", "message"), [
    (lambda: image_range("height", 32, 224, 450), "450 is not servable.*multiple of 32"),
    (lambda: image_range("width", 16, 224, 448), "16 is not servable"),
    (lambda: image_range("height", 64, 32, 448), "min <= opt <= max"),
    (lambda: batch_range(8, 4, 2), "min <= opt <= max"),
    (lambda: ExportConfig("se", opset=11), "opset 11 is not supported.*18"),
    (lambda: ExportConfig("sa", batch=batch_range(1, 1, 8),
                          height=image_range("height", 32, 224, 224),
                          width=image_range("width", 32, 224, 224)), r"'sa' cannot serve.*GiB"),
    (lambda: ExportConfig("vgg19"), "unknown variant"),
    (lambda: ExportConfig("se", checkpoint="missing.pt"), "missing.pt does not exist"),
])
def test_bad_export_settings_get_a_clear_error(make, message):
    with pytest.raises(models.ConfigError, match=message):
        make()


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create output folder.*a-file"):
        export_to_folder(tiny_config("vgg16"), blocker / "se", log=_quiet)


def test_checkpoint_weights_are_exported(tmp_path):
    config = tiny_config("se")
    torch.manual_seed(11)  # other weights than the seeded default the export would build
    source = models.create_model("se", num_classes=10, width=0.125)
    path = models.save_checkpoint(source, tmp_path / "se.safetensors", "se", 10, 0.125)
    manifest = json.loads(export_to_folder(
        tiny_config("se", checkpoint=path), tmp_path / "out", log=_quiet).read_text())
    assert "loaded" in manifest["weights"]
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 96), dtype=np.float32)
    out = OnnxRuntimeRunner(tmp_path / "out" / "model.onnx")(x)
    np.testing.assert_allclose(out, run_torch(source, x), rtol=1e-4, atol=1e-4 * np.abs(out).max())
    default, _ = build_model(config)  # the graph is not what the default weights compute
    assert np.abs(out - run_torch(default, x)).max() > 100 * 1e-4 * np.abs(out).max()


@pytest.mark.slow
def test_full_size_se_exports_and_verifies(tmp_path):
    """Full-size VGG16-SE (554 MB graph) once: export, verify at 5 shapes, simplify."""
    manifest_path = export_to_folder(ExportConfig("se"), tmp_path / "se", log=_quiet)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["parity"]["onnx-fp32-vs-eager"]["passed"]
    assert manifest["parity"]["onnx-fp32-vs-eager"]["worst_rel_max"] < 1e-4
    assert manifest["artifacts"][0]["bytes"] > 500e6
    assert sorted(p.name for p in (tmp_path / "se").iterdir()) == ["manifest.json", "model.onnx"]
    # The fp16 graph of the full-size model, read by both runtimes (docs/precision.md: OpenVINO
    # read it 200x further from eager before the pool's bins became integer arithmetic).
    from attnvgg_export.graphs.fp16 import onnx_to_fp16
    from attnvgg_export.verify.budgets import load_tolerances
    from attnvgg_runtime.readers.openvino import OpenVinoRunner
    from attnvgg_runtime.verify.measures import metrics

    fp16 = onnx_to_fp16(tmp_path / "se" / "model.onnx", tmp_path / "se" / "model.fp16.onnx")
    model = model_from_manifest(Manifest.from_json(manifest))
    budget = load_tolerances("se")["fp16"]["rel_l2_max"]
    for shape in [(1, 3, 96, 320)]:  # 3x10 feature maps: uneven pooling bins
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        reference = run_torch(model, x)
        for runner in (OnnxRuntimeRunner(fp16), OpenVinoRunner(fp16, "f32")):
            assert metrics(runner(x), reference)["rel_l2"] <= budget, (type(runner), shape)


def test_export_with_opt_size_32_stays_dynamic(tmp_path):
    """At 32x32 the last stage is 1x1; tracing there would bake H and W into the graph."""
    config = tiny_config("vgg16", batch=batch_range(1, 1, 4), height=image_range("height", 32, 32, 96),
                         width=image_range("width", 32, 32, 96))
    manifest = json.loads(export_to_folder(config, tmp_path, log=_quiet).read_text())
    assert manifest["parity"]["onnx-fp32-vs-eager"]["passed"]


def test_a_checkpoint_changed_after_the_build_is_refused(tmp_path):
    from attnvgg_runtime.manifest import ManifestError

    path = models.save_checkpoint(build_model(tiny_config("se"))[0], tmp_path / "se.pt", "se", 10,
                                  0.125)
    manifest_path = export_to_folder(tiny_config("se", checkpoint=path), tmp_path / "out", log=_quiet)
    manifest = json.loads(manifest_path.read_text())
    model_from_manifest(Manifest.from_json(manifest))  # unchanged: fine
    torch.manual_seed(5)
    models.save_checkpoint(models.create_model("se", num_classes=10, width=0.125), path, "se", 10,
                           0.125)
    with pytest.raises(ManifestError, match="se.pt changed since the build.*make engine CHECKPOINT="):
        model_from_manifest(Manifest.from_json(manifest))
