"""The CI gate: it passes a good build and fails a bad one, with files CI can read. Every
negative test plants a bug into a copy of a good build, updates the manifest's sha256 as a
careless rebuild would, and shows the gate fails on it."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from attnvgg_export.cli import main
from attnvgg_export.models import ConfigError
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_export.verify.cases import shape_cases
from attnvgg_export.verify.gate import run_parity
from attnvgg_runtime.manifest import Artifact, ManifestError, read_manifest, sha256_file, write_manifest
from attnvgg_runtime.readers.cpu import openvino_int8_has_vnni
from attnvgg_runtime.verify.budgets import breaches, budget_margin, resolvable
from attnvgg_runtime.verify.measures import metrics
from tests.conftest import copy_build


def _quiet(*_):
    pass


def _rehash(root, path):
    """What a careless rebuild does: the manifest follows the file, whatever is in it."""
    manifest = read_manifest(root / "manifest.json")
    entry = next(a for a in manifest.artifacts if a.path == path)
    entry.sha256 = sha256_file(root / path)
    entry.bytes = (root / path).stat().st_size
    write_manifest(root / "manifest.json", manifest)


def _scale_initializer(root, path, pick, factor=1.05):
    """Multiply one initializer chosen by pick(node, model) -> name by factor; rehash."""
    model = onnx.load(str(root / path))
    name = pick(model)
    tensor = next(i for i in model.graph.initializer if i.name == name)
    tensor.CopyFrom(numpy_helper.from_array(
        (numpy_helper.to_array(tensor) * factor).astype(numpy_helper.to_array(tensor).dtype), name))
    onnx.save(model, str(root / path))
    _rehash(root, path)
    return name


@pytest.mark.numerics
def test_gate_passes_a_good_build_and_writes_json_junit_and_report(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    report = run_parity(root / "manifest.json", log=_quiet)
    assert report.passed, report.failures()
    parity = json.loads((root / "parity.json").read_text())
    # 5 graphs by 2 readers, the camera-frame graph by its target's, 2 .ort files by ONNX Runtime
    assert parity["passed"] and len(parity["artifacts"]) == 11
    readers = {(a["path"], a["reader"]) for a in parity["artifacts"]}
    onnx_graphs = {"model.onnx", "model.fp16.onnx", "model.int8-trt.onnx", "model.int8-cpu.onnx"}
    assert {p for p, r in readers if r == "openvino"} == onnx_graphs  # the second reader
    assert {p for p, r in readers if r == "onnxruntime"} == onnx_graphs | {
        "model.int8-cpu.frame.onnx", "engines/ort/model.fp32.ort", "engines/ort/model.int8-cpu.ort"}
    # skipped only where this CPU cannot compute it: OpenVINO on signed int8 without VNNI
    skipped = {f"{a['path']} [{a['reader']}]" for a in parity["artifacts"] if a["skipped"]}
    assert skipped == (set() if openvino_int8_has_vnni() else {"model.int8-trt.onnx [openvino]"})
    # held-out + 4 corner shapes; the held-out images run at the max batch are the fifth corner
    assert all(len(a["cases"]) == 5 for a in parity["artifacts"] if not a["skipped"])
    top = read_manifest(root / "manifest.json").dynamic["batch"]["max"]
    assert f"{top}x3x224x224" in parity["shapes"]  # the max batch is gated
    split = read_manifest(root / "manifest.json").data_split
    assert parity["heldout"]["ids_sha256"] == split["ids_sha256"]["heldout"]
    suite = ET.parse(root / "parity.junit.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("skipped") == str(len(skipped))
    assert int(suite.get("tests")) == (11 - len(skipped)) * (5 + 1) + len(skipped)
    text = (root / "report.md").read_text()
    assert "Gate: **passed**" in text and "parity-errors.png" in text
    assert (root / "parity-errors.png").read_bytes()[:4] == b"\x89PNG"
    assert read_manifest(root / "manifest.json").parity["gate"]["passed"]


def test_gate_fails_a_model_with_one_conv_scaled_by_5_percent(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    _scale_initializer(root, "model.onnx", lambda m: next(
        n for n in m.graph.node if n.op_type == "Conv").input[1])
    report = run_parity(root / "manifest.json", log=_quiet, only={"model.onnx"})
    assert not report.passed
    assert {f.split(": ")[0] for f in report.failures()} == {
        "model.onnx [onnxruntime]", "model.onnx [openvino]"}  # both readers see it
    # and the message names the module where the error enters: the conv that was scaled
    assert all("error first grows past the rel L2 budget 0.0001 at features.0 (Conv2d" in f
               for f in report.failures() if "[onnxruntime]" in f)
    assert any("rel_l2" in f for f in report.failures())
    suite = ET.parse(root / "parity.junit.xml").getroot()
    assert int(suite.get("failures")) >= 1
    assert "Gate: **FAILED**" in (root / "report.md").read_text()


@pytest.mark.numerics
def test_gate_fails_an_int8_graph_with_one_dequantize_scale_x105(precision_build, tmp_path):
    """Too small for the absolute int8 budget; the drift check catches it."""
    root = copy_build(precision_build, tmp_path)
    good = run_parity(copy_build(precision_build, tmp_path / "good") / "manifest.json", log=_quiet,
                      only={"model.int8-trt.onnx"})
    good_int8 = next(a for a in good.artifacts if a.label == "model.int8-trt.onnx [onnxruntime]")
    _scale_initializer(root, "model.int8-trt.onnx", lambda m: next(
        n for n in m.graph.node if n.op_type == "DequantizeLinear"
        and any(i.name == n.input[0] and i.data_type == onnx.TensorProto.INT8
                for i in m.graph.initializer)).input[1])
    report = run_parity(root / "manifest.json", log=_quiet, only={"model.int8-trt.onnx"})
    bad = next(a for a in report.artifacts if a.label == "model.int8-trt.onnx [onnxruntime]")
    assert bad.cases["heldout"]["rel_l2"] <= load_tolerances("se")["int8"]["rel_l2_max"]
    assert bad.cases["heldout"]["rel_l2"] > good_int8.cases["heldout"]["rel_l2"]
    assert not report.passed
    assert [f for f in report.failures() if "drift" in f] and all(
        f.startswith("model.int8-trt.onnx [onnxruntime]") for f in report.failures())


@pytest.mark.numerics
def test_gate_fails_an_fp16_graph_with_one_weight_x105(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    _scale_initializer(root, "model.fp16.onnx", lambda m: next(
        n for n in m.graph.node if n.op_type == "Conv").input[1])
    report = run_parity(root / "manifest.json", log=_quiet, only={"model.fp16.onnx"})
    assert not report.passed
    assert all(f.startswith("model.fp16.onnx") for f in report.failures())


@pytest.mark.parametrize("path", ["model.int8-cpu.onnx", "engines/ort/model.fp32.ort"])
@pytest.mark.parametrize("vnni", [True, False])
def test_an_artifact_that_does_not_load_fails_the_gate(precision_build, tmp_path, capsys, path,
                                                       vnni, monkeypatch):
    from attnvgg_runtime.verify import readers

    monkeypatch.setattr(readers, "openvino_int8_has_vnni", lambda: vnni)  # both paths, any CPU
    root = copy_build(precision_build, tmp_path)
    (root / path).write_bytes(b"not a model")
    _rehash(root, path)
    report = run_parity(root / "manifest.json", log=_quiet, only={path})
    assert not report.passed and report.skipped() == []
    assert [f for f in report.failures() if f.startswith(f"{path} [onnxruntime]: cannot be loaded")]
    assert main(["parity", "--manifest", str(root / "manifest.json")]) == 1
    assert "parity: FAILED" in capsys.readouterr().err


def _with_a_plan(precision_build, tmp_path, built_on: str | None = None):
    """A build listing an int8 plan; ``built_on``: the host that built it (backend tensorrt)."""
    from attnvgg_runtime.manifest import artifact_entry

    root = copy_build(precision_build, tmp_path)
    (root / "engines" / "trt").mkdir(parents=True)
    (root / "engines/trt/int8.plan").write_bytes(b"PLAN")
    manifest = read_manifest(root / "manifest.json")
    manifest.artifacts.append(artifact_entry(root / "engines/trt/int8.plan", root, "plan",
                                                "int8", "tensorrt"))
    if built_on:
        manifest.backend = {"requested": "auto", "used": "tensorrt", "why": "a GPU was there"}
        manifest.tensorrt = {"version": "11.4.0", "gpu": "NVIDIA H100",
                                "compute_capability": "9.0", "host": built_on}
    write_manifest(root / "manifest.json", manifest)
    return root


def test_plans_this_machine_built_but_cannot_run_fail_the_gate(precision_build, tmp_path,
                                                              monkeypatch, capsys):
    import socket
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # e.g. CUDA_VISIBLE_DEVICES empty in CI
    root = _with_a_plan(precision_build, tmp_path / "here", built_on=socket.gethostname())
    args = ["parity", "--manifest", str(root / "manifest.json"), "--artifacts", "engines/trt/int8.plan"]
    assert main(args) == 1
    assert "this machine built the plans" in capsys.readouterr().err
    # a build copied here from the GPU machine that built it: not verified here, reported so;
    # a gate asked to check only that plan read nothing, and a gate that read nothing fails
    root = _with_a_plan(precision_build, tmp_path / "copied", built_on="gpu-builder-7")
    assert main(["parity", "--manifest", str(root / "manifest.json"), "--artifacts",
                 "engines/trt/int8.plan"]) == 1
    err = capsys.readouterr().err
    assert "nothing was verified: 1 readings, every one skipped" in err and "engines/trt/int8.plan" in err
    parity = json.loads((root / "parity.json").read_text())
    assert parity["not_verified"][0].startswith("engines/trt/int8.plan [tensorrt]: ")
    assert not parity["passed"] and not read_manifest(root / "manifest.json").parity["gate"]["passed"]
    suite = ET.parse(root / "parity.junit.xml").getroot()
    assert suite.find("testcase[@name='anything verified']/failure") is not None


@pytest.mark.slow  # 18.1 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_a_plan_without_tensorrt_is_reported_as_skipped_not_verified(precision_build, tmp_path,
                                                                     monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    root = _with_a_plan(precision_build, tmp_path)
    assert main(["parity", "--manifest", str(root / "manifest.json")]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED, not verified" in out
    # what else is not verified depends on the CPU (OpenVINO's signed int8 without VNNI, bf16)
    verdict = next(line for line in out.splitlines() if "not verified on this machine:" in line)
    assert verdict == out.splitlines()[-1]  # the last line CI prints
    assert "engines/trt/int8.plan [tensorrt]" in verdict.split("not verified on this machine:")[1]
    gate = read_manifest(root / "manifest.json").parity["gate"]
    assert any(s.startswith("engines/trt/int8.plan [tensorrt]: ") for s in gate["skipped"])


def test_a_missed_fallback_target_fails_the_gate(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    manifest.calibration["fallback"]["int8-cpu"]["met"] = False
    write_manifest(root / "manifest.json", manifest)
    int8 = {"model.int8-trt.onnx", "model.int8-cpu.onnx", "engines/ort/model.int8-cpu.ort"}
    report = run_parity(root / "manifest.json", log=_quiet, only=int8)
    failing = {f.split(" [")[0] for f in report.failures()}
    assert failing == {"model.int8-cpu.onnx", "engines/ort/model.int8-cpu.ort"}
    assert all("fallback missed its target" in f for f in report.failures())


def test_held_out_images_that_changed_since_the_build_are_refused(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    manifest.data_split["seed"] = 7  # another split than the one set aside
    write_manifest(root / "manifest.json", manifest)
    with pytest.raises(ManifestError, match="held-out images .* are not the ones the build set aside"):
        run_parity(root / "manifest.json", log=_quiet)


def test_an_artifact_edited_after_the_build_is_refused(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    with open(root / "model.int8-cpu.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="model.int8-cpu.onnx no longer matches the sha256"):
        run_parity(root / "manifest.json", log=_quiet)


def test_a_missing_artifact_is_refused(precision_build, tmp_path):
    root = copy_build(precision_build, tmp_path)
    (root / "engines" / "ort" / "model.fp32.ort").unlink()
    with pytest.raises(ManifestError, match="model.fp32.ort listed in .* is missing"):
        run_parity(root / "manifest.json", log=_quiet)


def test_a_user_tolerances_file_merges_over_the_defaults(tmp_path):
    default = load_tolerances("se")
    assert default["fp32"]["rel_l2_max"] == 1e-4
    assert load_tolerances("sa")["fp16"]["rel_l2_max"] == 1e-2 > default["fp16"]["rel_l2_max"]
    custom = tmp_path / "t.toml"
    custom.write_text("[precision.fp32]\nrel_l2_max = 1e-3\n[variant.se.fp32]\ncosine_min = 0.5\n")
    merged = load_tolerances("se", custom)
    assert merged["int8"] == default["int8"]  # a file without an int8 section still gates int8
    assert merged["fp32"] == {**default["fp32"], "rel_l2_max": 1e-3, "cosine_min": 0.5}


@pytest.mark.parametrize(("text", "message"), [
    ("[precision.int8]\nrel_l2 = 0.5\n", r"\[precision.int8\]: unknown keys \['rel_l2'\]"),
    ("[precision.in8]\nrel_l2_max = 0.5\n", r"unknown sections \['precision.in8'\]"),
    ("[variant.sse.int8]\nrel_l2_max = 0.5\n", r"unknown sections \['variant.sse'\]"),
    ("[precison.int8]\nrel_l2_max = 0.5\n", r"unknown sections \['precison'\]"),
    ("[variant.se.int9]\nrel_l2_max = 0.5\n", r"unknown sections \['variant.se.int9'\]"),
])
def test_misspelled_tolerances_are_refused(tmp_path, text, message):
    custom = tmp_path / "t.toml"
    custom.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_tolerances("se", custom)


def test_nan_always_fails_and_agreement_is_gated_only_for_trained_weights():
    reference = np.random.default_rng(0).standard_normal((100, 10))
    shuffled = reference[:, ::-1].copy()
    budget = {"rel_l2_max": 10.0, "cosine_min": -1.0, "top1_min": 0.99}
    assert breaches(metrics(shuffled, reference), budget, trained=False) == []
    assert any(b.check == "top1_min" for b in breaches(metrics(shuffled, reference), budget, trained=True))
    poisoned = reference.copy()
    poisoned[0, 0] = np.nan
    found = breaches(metrics(poisoned, reference), budget, False)
    assert "NaN or Inf in the outputs" in [b.message for b in found]


def test_agreement_is_gated_only_where_the_images_can_resolve_the_budget():
    reference = np.random.default_rng(0).standard_normal((40, 10))
    one_flip = reference.copy()
    one_flip[0] = -one_flip[0]  # one image's ranking reversed: its top-1 and top-5 change
    budget = {"top1_min": 0.95, "top5_min": 0.85}
    # 40 images: one disagreement in 40 is inside 95%, and gated
    assert breaches(metrics(one_flip, reference), budget, trained=True) == []
    assert resolvable("top1_min", metrics(one_flip, reference), budget)
    # 8 images: 95% cannot be resolved (1 in 8 is 12.5%): reported, not gated
    few = metrics(one_flip[:8], reference[:8])
    assert few["top1"] == 0.875 and not resolvable("top1_min", few, budget)
    assert resolvable("top5_min", few, budget)  # one class of 5 x 8 is 2.5%, inside 15%
    assert breaches(few, budget, trained=True) == []
    # a budget of perfection is measurable on any number of images
    assert any(b.check == "top1_min" for b in breaches(few, {"top1_min": 1.0}, trained=True))


def test_agreement_counts_independent_images_not_crops():
    # 64 crops of 3 photographs agree or disagree by photograph: 1/3 per step cannot resolve
    # top-1 >= 0.95, while 64 independent images can
    budget = {"top1_min": 0.95}
    assert resolvable("top1_min", {"images": 64}, budget)
    assert not resolvable("top1_min", {"images": 64, "sources": 3}, budget)
    assert breaches({"finite": True, "rel_l2": 0, "cosine": 1, "top1": 2 / 3, "top5": 1,
                     "images": 64, "sources": 3}, budget, trained=True) == []


def test_budget_margin_is_the_tightest_ratio_of_allowed_to_measured_error():
    budget = {"rel_l2_max": 0.12, "cosine_min": 0.98, "top1_min": 0.95}
    result = {"finite": True, "rel_l2": 0.06, "cosine": 0.99, "top1": 1.0, "top5": 1.0, "images": 64}
    assert budget_margin(result, budget, trained=False) == pytest.approx(2.0)  # cosine 0.02/0.01
    assert budget_margin({**result, "rel_l2": 0.24}, budget, trained=False) == pytest.approx(0.5)
    assert budget_margin({**result, "top1": 0.9}, budget, trained=True) == pytest.approx(0.5)
    assert budget_margin({**result, "top1": 0.9}, budget, trained=False) == pytest.approx(2.0)
    assert budget_margin({**result, "finite": False}, budget, trained=False) == 0.0


def test_shape_cases_aggregate_over_images_and_gate_int8_only_at_sides_of_64_px():
    from attnvgg_export.calibration.data import ImageSet

    dynamic = {"batch": {"min": 1, "opt": 1, "max": 32}, "height": {"min": 32, "opt": 224, "max": 448},
               "width": {"min": 32, "opt": 224, "max": 448}}
    images = ImageSet(np.zeros((64, 3, 224, 224), np.float32), None, "zeros")
    thorough = shape_cases(dynamic, images, thorough=True)
    # the min size is measured too: fp16 and fp32 are declared servable there and gated there
    assert list(thorough) == ["heldout", "1x3x32x32", "1x3x32x448", "32x3x224x224", "4x3x448x32",
                              "2x3x448x448"]
    assert [len(c.images) for c in thorough.values()] == [64, 64, 64, 32, 64, 8]
    assert [c.batch for c in thorough.values()] == [8, 1, 1, 32, 4, 2]
    assert [c.gates("int8") for c in thorough.values()] == [True, False, False, True, False, True]
    assert all(c.gates("fp16") and c.gates("fp32") for c in thorough.values())
    assert [c.sources for c in thorough.values()] == [64, 64, 64, 32, 64, 8]  # no ids: each its own
    assert all(c.float_images is None for c in thorough.values())
    # the lighter gate: the held-out images at the max batch are that corner too, and float
    # graphs read a corner's first 4 images in whole batches (int8 every image)
    cases = shape_cases(dynamic, images)
    assert list(cases) == ["heldout", "1x3x32x32", "1x3x32x448", "4x3x448x32", "2x3x448x448"]
    assert cases["heldout"].batch == 32 and cases["heldout"].stands_for == "32x3x224x224"
    assert [len(c.images) for c in cases.values()] == [64, 64, 64, 64, 8]
    assert [c.float_images for c in cases.values()] == [None, 4, 4, 4, 4]
    # fewer held-out images than the max batch: the corner stays a case of its own
    few = shape_cases(dynamic, ImageSet(images.images[:16], None, "zeros"))
    assert few["heldout"].batch == 8 and few["heldout"].stands_for is None and "32x3x224x224" in few
    # an opt size under 64 px is gated for int8 at its own size
    small = {**dynamic, "height": {"min": 32, "opt": 32, "max": 64}}
    assert all(c.gates("int8") for c in shape_cases(small, images).values())


@pytest.mark.slow  # 21.2 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_cli_exit_code_is_the_verdict(precision_build, tmp_path, capsys):
    root = copy_build(precision_build, tmp_path)
    args = ["parity", "--manifest", str(root / "manifest.json")]
    assert main(args) == 0
    strict = tmp_path / "strict.toml"
    strict.write_text("[precision.int8]\nrel_l2_max = 1e-6\n")
    assert main(args + ["--tolerances", str(strict), "--artifacts", "model.int8-cpu.onnx"]) == 1
    captured = capsys.readouterr()
    assert "parity: FAILED" in captured.err
    # the budgets a user's file changed are printed, and recorded with the verdict
    assert "differ from the defaults: int8.rel_l2_max 0.12 -> 1e-06" in captured.out
    gate = read_manifest(root / "manifest.json").parity["gate"]
    assert gate["budgets_changed"] == ["int8.rel_l2_max 0.12 -> 1e-06"]
    assert gate["budgets"]["int8"]["rel_l2_max"] == 1e-6
    assert json.loads((root / "parity.json").read_text())["budgets_changed"] == gate["budgets_changed"]


def test_warnings_reach_the_last_line_and_junit(digits_build, tmp_path, capsys):
    """Trained weights, 248 labelled held-out digits: int8 changes at most a digit or two, which
    these images cannot resolve against a 1-point budget (381 would, with none changed). The
    gate passes, and says so as warnings: on its last line, in parity.json and in JUnit."""
    root = copy_build(digits_build.manifest.parent, tmp_path)
    assert main(["parity", "--manifest", str(root / "manifest.json"), "--artifacts",
                 "model.int8-cpu.onnx", "--cases"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    parity = json.loads((root / "parity.json").read_text())
    warnings = parity["warnings"]
    assert warnings and all("not resolvable on 248 images" in w for w in warnings), warnings
    assert last.startswith("parity: passed (2 artifact readings verified), "
                           f"{len(warnings)} warnings ({len(warnings)} accuracy not resolvable")
    assert read_manifest(root / "manifest.json").parity["gate"]["warnings"] == warnings
    suite = ET.parse(root / "parity.junit.xml").getroot()
    properties = [p.get("value") for p in suite.iter("property") if p.get("name") == "warning"]
    assert sorted(properties) == sorted(w.split(": ", 1)[1] for w in warnings)
    assert all("WARNING: " in (s.text or "") for s in suite.iter("system-out"))
    assert suite.get("failures") == "0"
    assert f"**{len(warnings)} warnings**" in (root / "report.md").read_text()


def test_one_bad_image_does_not_hide_in_the_aggregate():
    # 63 images within int8's usual error, one whose logits are 1.3 times eager's: the aggregate
    # rel L2 stays inside 0.12 and cosine sees no scale error, the per-image bound does not
    rng = np.random.default_rng(0)
    eager = rng.standard_normal((64, 10))
    outputs = eager + 0.05 * rng.standard_normal((64, 10))
    outputs[17] = eager[17] * 1.3
    result = metrics(outputs, eager)
    budget = load_tolerances("se")["int8"]
    assert result["rel_l2"] < budget["rel_l2_max"] and result["cosine"] > budget["cosine_min"]
    assert result["rel_l2_image"] == pytest.approx(0.3)
    found = breaches(result, budget, trained=False)
    assert [str(b) for b in found] == ["worst image's rel L2 0.3 (budget 0.24)"]
    # a low-confidence image (logits a tenth of the others') with the same absolute error as the
    # others is no bad image: measured against the median image's norm, it reads as they do
    outputs = eager + 0.05 * rng.standard_normal((64, 10))
    eager[5], outputs[5] = eager[5] / 10, eager[5] / 10 + 0.05 * rng.standard_normal(10)
    result = metrics(outputs, eager)
    assert result["rel_l2_image"] < 2 * result["rel_l2"] < budget["rel_l2_image_max"]


def test_readers_that_disagree_are_reported_as_such():
    from attnvgg_runtime.verify.check import ArtifactParity, reader_disagreement

    def readers(precision: str, error: float = 0.0) -> list[ArtifactParity]:
        return [ArtifactParity("model.onnx", precision, r, cases={"heldout": {"rel_l2": error}})
                for r in ("onnxruntime", "openvino")]

    entries = readers("fp16")
    logits = np.random.default_rng(0).standard_normal((8, 10))
    same = {e.label: logits for e in entries}
    assert reader_disagreement(entries, same, {"rel_l2_max": 5e-3}) is None
    off = {entries[0].label: logits, entries[1].label: logits * 1.17}
    finding = reader_disagreement(entries, off, {"rel_l2_max": 5e-3})
    assert finding and finding.message.startswith("readers disagree: onnxruntime and openvino differ")
    assert finding.check == "agreement_max" and finding.measured == pytest.approx(0.17 / 1.17)
    assert entries[1].checks["readers agree"]["margin"] == pytest.approx(5e-3 / (0.17 / 1.17))
    # int8: two correct readers round differently at every requantization, so they are held to
    # a multiple of their own error against eager; 0.06 apart with 0.08 each passes (the AMX
    # Xeon's full-size figures), 0.06 apart with 0.02 each is a reader computing another graph
    int8 = load_tolerances("se")["int8"]
    apart = {entries[0].label: logits, entries[1].label: logits * 1.06}
    assert reader_disagreement(readers("int8", 0.08), apart, int8) is None
    wrong = readers("int8", 0.02)
    finding = reader_disagreement(wrong, apart, int8)
    assert "1.6 x the smaller reader's rel L2 against eager 0.02" in finding.message
    assert wrong[1].checks["readers agree"]["margin"] == pytest.approx((1.6 * 0.02 + 1e-4) / (0.06 / 1.06))


def test_a_converted_artifact_is_held_to_its_conversion_redone_and_to_its_source():
    from attnvgg_runtime.verify.check import ArtifactParity, derived_difference

    logits = np.random.default_rng(0).standard_normal((8, 10))
    budget = load_tolerances("se")["int8"]
    ir = Artifact("engines/openvino/model.int8.xml", "openvino-ir", "int8", "openvino-cpu", 0, "",
                  source="model.int8-cpu.onnx")
    source = {"rel_l2": 0.08, "rel_l2_image": 0.1}

    def judged(outputs, mine=(0.08, 0.1)):
        entry = ArtifactParity(ir.path, "int8", "openvino",
                               cases={"heldout": {"rel_l2": mine[0], "rel_l2_image": mine[1]}})
        return derived_difference(entry, ir, outputs, logits, source, budget), entry

    assert judged(logits)[0] == []  # the file is what its conversion makes, exactly
    found, entry = judged(logits * 1.001)  # a damaged file cannot hide in rounding noise
    assert len(found) == 1 and "not what its conversion makes" in found[0].message
    assert found[0].check == "derived_max" and found[0].margin < 1
    assert entry.cases["heldout"]["rel_l2_vs_reconverted"] == pytest.approx(1e-3)
    # a conversion that lost accuracy: 15% farther from eager than its source, and more
    found, entry = judged(logits, mine=(0.08 * 1.2, 0.1))
    assert len(found) == 1 and "farther from eager than model.int8-cpu.onnx" in found[0].message
    assert found[0].check == "derived_excess_max"
    assert judged(logits, mine=(0.08 * 1.1, 0.1 * 1.1))[0] == []
