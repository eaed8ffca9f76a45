"""The precision stage end to end, on the trained digits fixture (benchmarks/digits.py).

Every threshold here comes from the fixture's own measured accuracy, the stage's own targets or
the gate's budgets (attnvgg_export/verify/tolerances.toml), never from one machine's result: what a model
computes in int8 or fp16 differs between AVX2, AVX-512 VNNI and AMX kernels."""

import json

import numpy as np
import pytest
import torch

from attnvgg_export.graphs.precision import FP16_TOLERANCE, build_precision_graphs
from attnvgg_export.graphs.quantize import quantizable_nodes
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_runtime.manifest import FORMATS, PRECISIONS, TARGETS, sha256_file
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from benchmarks import digits
from benchmarks.planted_bugs import scale_range
from tests.conftest import copy_build

pytestmark = pytest.mark.numerics


def _heldout(build):
    return json.loads(build.manifest.read_text())["parity"]["heldout-vs-eager"]


def test_fixture_is_trained_as_its_validation_says(digits_build):
    parity = _heldout(digits_build)
    assert parity["eager-fp32"]["images"] == 248
    eager = parity["eager-fp32"]["accuracy"]
    # The fixture reached >= 0.95 on 197 validation images. On 248 unseen ones the two figures
    # differ by noise with sigma ~2 points (binomial, both sets): 8 points is 4 sigma. A model
    # that learnt nothing scores chance (10%).
    assert digits_build.fixture.validation_accuracy >= digits.TARGET_ACCURACY
    assert eager >= digits_build.fixture.validation_accuracy - 0.08
    assert eager > 5 * digits.CHANCE


@pytest.mark.slow
def test_the_fixture_recipe_trains_to_its_target_on_this_cpu():
    """The shipped fixture's recipe, trained afresh under this CPU's kernels (each ISA trains a
    different model: the reason it is shipped), still reaches the target the tests rely on, and
    the shipped weights still load and score what their record says."""
    shipped = digits.shipped_fixture()
    assert shipped.validation_accuracy >= digits.TARGET_ACCURACY
    pixels, labels = digits.digit_images()
    validation = slice(digits.TRAIN_COUNT, digits.UNSEEN_START)
    with torch.inference_mode():
        reached = digits.accuracy(shipped.model(torch.from_numpy(digits.preprocess(pixels[validation]))),
                                  labels[validation])
    assert reached == pytest.approx(shipped.validation_accuracy, abs=1 / 197 + 1e-9)
    fresh = digits.train("se")
    assert fresh.validation_accuracy >= digits.TARGET_ACCURACY and fresh.epochs <= 3 * 24


def test_int8_graphs_meet_the_fallback_target_and_the_gate_budget(digits_build):
    manifest = json.loads(digits_build.manifest.read_text())
    parity = manifest["parity"]["heldout-vs-eager"]
    for target, report in manifest["calibration"]["fallback"].items():
        assert report["metric"] == "margin" and report["goal"] == digits_build.config.margin_target
        assert report["met"] and report["final"] >= report["goal"], (target, report)
    budget = load_tolerances("se")["int8"]
    eager = parity["eager-fp32"]["accuracy"]
    for name in ("int8-trt-onnx", "int8-cpu-onnx"):
        assert parity[name]["top1_agreement"] >= budget["top1_min"], (name, parity[name])
        assert eager - parity[name]["accuracy"] <= budget["accuracy_drop_max"], (name, parity[name])


def test_the_fp16_graph_agrees_with_eager_within_its_budget(digits_build):
    parity = _heldout(digits_build)
    budget = load_tolerances("se")["fp16"]
    fp16 = parity["fp16-onnx"]
    assert fp16["finite"] and fp16["rel_max"] <= FP16_TOLERANCE
    assert fp16["top1_agreement"] >= budget["top1_min"]
    assert abs(parity["eager-fp32"]["accuracy"] - fp16["accuracy"]) <= budget["accuracy_drop_max"]
    assert set(parity) == {"eager-fp32", "fp16-onnx", "int8-trt-onnx", "int8-cpu-onnx"}


def test_every_artifact_is_listed_with_its_sha256(digits_build):
    manifest = json.loads(digits_build.manifest.read_text())
    listed = {a["path"]: a for a in manifest["artifacts"]}
    assert set(listed) == {"model.onnx", "model.fp16.onnx", "model.int8-trt.onnx",
                           "model.int8-cpu.onnx", "model.int8-cpu.frame.onnx", "engines/ort/model.fp32.ort",
                           "engines/ort/model.int8-cpu.ort"}
    frame = listed["model.int8-cpu.frame.onnx"]
    assert frame["input"]["dtype"] == "uint8" and frame["source"] == "model.int8-cpu.onnx"
    for path, entry in listed.items():
        assert entry["sha256"] == sha256_file(digits_build.manifest.parent / path)
        assert entry["format"] in FORMATS and entry["precision"] in PRECISIONS
        assert entry["target"] in TARGETS
    assert listed["model.int8-trt.onnx"]["target"] == "tensorrt"
    assert listed["engines/ort/model.int8-cpu.ort"]["format"] == "ort"


def test_ort_format_model_runs_like_its_onnx_graph(digits_build):
    root = digits_build.manifest.parent
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    onnx_out = OnnxRuntimeRunner(root / "model.int8-cpu.onnx")(x)
    ort_out = OnnxRuntimeRunner(root / "engines/ort/model.int8-cpu.ort")(x)
    np.testing.assert_allclose(ort_out, onnx_out, rtol=1e-5, atol=1e-5 * np.abs(onnx_out).max())


def test_second_run_reuses_the_calibration_cache(digits_build, tmp_path):
    root = copy_build(digits_build.manifest.parent, tmp_path)
    first = json.loads((root / "manifest.json").read_text())["calibration"]
    assert not first["cached"] and first["method"] == "percentile" and first["images"] == 256
    build_precision_graphs(root / "manifest.json", digits_build.config, log=lambda *_: None)
    second = json.loads((root / "manifest.json").read_text())["calibration"]
    assert second["cached"] and second["ranges"] == first["ranges"]


def test_calibrating_a_share_at_the_largest_size_adds_those_images(precision_build, tmp_path):
    from attnvgg_export.graphs.precision import PrecisionConfig

    root = copy_build(precision_build, tmp_path)
    build_precision_graphs(root / "manifest.json", PrecisionConfig(
        calib_source="noise", calib_count=16, tuning_count=8, heldout_count=8, largest_share=0.25),
        log=lambda *_: None)
    calibration = json.loads((root / "manifest.json").read_text())["calibration"]
    assert calibration["images"] == 16 and not calibration["cached"]  # 12 at 224 + 4 at 448
    assert json.loads((root / "manifest.json").read_text())["data_split"]["counts"]["calibration"] == 16


def test_the_split_is_recorded_and_the_fallback_tunes_on_its_own_images(digits_build):
    manifest = json.loads(digits_build.manifest.read_text())
    split = manifest["data_split"]
    assert split["counts"] == {"calibration": 256, "tuning": 96, "heldout": 248}
    assert len(set(split["ids_sha256"].values())) == 3
    assert manifest["calibration"]["images"] == 256
    assert any("96 tuning (layer fallback), 248 held-out images (parity)" in line
               for line in digits_build.log)


def test_a_missed_fallback_target_fails_the_build_and_keeps_the_record(precision_build, tmp_path):
    from attnvgg_export.graphs.precision import FallbackTargetError, PrecisionConfig

    root = copy_build(precision_build, tmp_path)
    config = PrecisionConfig(calib_source="noise", calib_count=16, tuning_count=8, heldout_count=8,
                             margin_target=1000.0, max_fallback=1)  # int8 1000x inside: unreachable
    with pytest.raises(FallbackTargetError, match=r"int8-trt: margin .* on the tuning images "
                                                  r"\(target: margin >= 1000.0\) with 1 layers in float"):
        build_precision_graphs(root / "manifest.json", config, log=lambda *_: None)
    fallback = json.loads((root / "manifest.json").read_text())["calibration"]["fallback"]
    assert not fallback["int8-trt"]["met"] and not fallback["int8-cpu"]["met"]
    # noise has no labels: accuracy cannot aim the fallback, and the report says so
    assert fallback["int8-trt"]["accuracy"] is None
    from attnvgg_export.report.report import format_fallback
    assert "no labelled tuning images" in "\n".join(
        format_fallback(json.loads((root / "manifest.json").read_text())["calibration"]))


@pytest.mark.slow  # the precision stage rebuilt on labelled tuning images: 20-32 s
def test_the_fallback_aims_at_accuracy_where_the_tuning_images_have_labels(digits_build, tmp_path):
    """A range clipped to 3% at the input of the last conv block (a calibration bug) costs about
    half of top-1 on the shipped fixture. With a loose rel-L2 aim (margin target 0.01, as a user
    with loose rel-L2 budgets has) nothing stays float and the held-out drop is over budget with
    confidence; the accuracy aim, acting since the tuning drop is over budget with confidence,
    ranks the layers by their share of the drop on the labelled tuning digits, keeps the clipped
    conv in float, and the disjoint held-out digits confirm it: not over budget (248 digits cannot
show a drop within one point: with none changed the interval reaches 1.53).
    Margins (`python -m benchmarks.planted_bugs`, stored in docs/runs/planted-bugs/: natively on
    Zen 4 and with torch and oneDNN held to AVX2): the held-out drop's lower bound 57x the budget,
    the tuning drop's 45x, features.28's share 1.0 (asserted >= 0.5: 2x), the confirmed drop
    not failed. A clip to 0.1, this test's bug before, is "not resolvable" on the shipped
    fixture: no margin at all."""
    from dataclasses import replace

    from attnvgg_export.report.report import format_fallback
    from attnvgg_runtime.verify.accuracy import drop_verdict

    root = copy_build(digits_build.manifest.parent, tmp_path)
    scale_range(root, "max_pool2d_3", 0.03)  # the input of features.28
    budget = load_tolerances("se")["int8"]["accuracy_drop_max"]
    loose = replace(digits_build.config, margin_target=0.01)
    build_precision_graphs(root / "manifest.json", replace(loose, accuracy_aim=False),
                           log=lambda *_: None)
    manifest = json.loads((root / "manifest.json").read_text())
    for target in ("int8-trt", "int8-cpu"):
        assert manifest["calibration"]["fallback"][target]["fallen_back"] == []
        held = manifest["parity"]["heldout-vs-eager"][f"{target}-onnx"]
        judged = drop_verdict(held["lost"], held["gained"], held["images"], budget)
        assert judged["verdict"] == "over budget" and judged["low"] >= 2 * budget, held

    lines: list[str] = []
    build_precision_graphs(root / "manifest.json", loose, log=lines.append)
    manifest = json.loads((root / "manifest.json").read_text())
    for target in ("int8-trt", "int8-cpu"):
        aimed = manifest["calibration"]["fallback"][target]
        accuracy = aimed["accuracy"]
        assert accuracy["images"] == 96 and accuracy["verdict_initial"] == "over budget" and accuracy["acted"]
        assert accuracy["shares"][0]["module"] == "features.28" and accuracy["shares"][0]["share"] >= 0.5
        assert len(accuracy["shares"]) == len(quantizable_nodes(root / "model.onnx"))
        assert [f["module"] for f in aimed["fallen_back"]][:1] == ["features.28"]
        assert aimed["fallen_back"][0]["aim"] == "accuracy"
        assert accuracy["met"] and accuracy["final"]["drop"] <= budget and aimed["met"]
        assert accuracy["confirmed"]["images"] == 248
        confirmed = accuracy["confirmed"]
        assert confirmed["verdict"] != "over budget" and not confirmed["fails"], confirmed
    assert any("ranking" in line and "by their share" in line for line in lines)
    report = "\n".join(format_fallback(manifest["calibration"]))
    assert "features.28 (accuracy, share" in report


def test_the_accuracy_aim_keeps_layers_by_share_each_only_if_it_lowers_the_drop():
    from attnvgg_export.graphs.fallback import _aim_at_accuracy

    # 100 images; the all-int8 drop is 15 points (over budget with confidence): layer b costs
    # 9, a costs 6, c nothing alone (and in float with others it costs a point: it must not stay)
    cost = {"a": 6, "b": 9, "c": 0}

    def measure(in_float: list[str], total: int = 15) -> dict:
        lost = total - sum(cost[n] for n in in_float) + (1 if "c" in in_float and len(in_float) > 1 else 0)
        return {"drop": lost / 100, "lost": lost, "gained": 0}

    ranking = [{"node": n, "module": f"m.{n}", "added": 0.1} for n in "abc"]
    kept, record = _aim_at_accuracy(0.01, 100, measure, list("abc"), lambda: ranking, 6, "t",
                                    lambda *_: None)
    excluded = [k["node"] for k in kept]
    assert record["verdict_initial"] == "over budget" and record["acted"]
    assert excluded == ["b", "a"] and record["met"] and record["final"]["drop"] == 0.0
    assert [s["node"] for s in record["shares"]] == ["b", "a", "c"]
    assert record["shares"][0]["share"] == pytest.approx(0.6)
    kept, record = _aim_at_accuracy(0.01, 100, measure, list("abc"), lambda: ranking, 1, "t",
                                    lambda *_: None)
    excluded = [k["node"] for k in kept]
    assert excluded == ["b"] and not record["met"] and record["final"]["drop"] == pytest.approx(0.06)
    assert record["verdict"] == "over budget"  # 6 images of 100, all lost: [2.1, 12.5] points
    # a drop of 4 images in 100 is past the budget by its point estimate, but its interval
    # reaches below it ([0.15, 9.8] points): another CPU's kernels could flip it, so no layer is
    # kept for it
    lines: list[str] = []
    kept, record = _aim_at_accuracy(0.01, 100, lambda nodes: measure(nodes, total=4), list("abc"),
                                    lambda: ranking, 6, "t", lines.append)
    assert kept == [] and not record["acted"] and record["verdict_initial"] == "not resolvable"
    assert record["shares"] == [] and "no layer kept in float for it" in lines[0]


@pytest.mark.slow  # 23.2 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_the_gate_holds_a_trained_build_to_top1_where_images_are_enough_to_measure_it(
        digits_build, tmp_path):
    """Trained weights: the gate's top-1/top-5 budgets apply. On 248 held-out digits a budget of
    95% allows 12 disagreements; on a corner's 8 images it would allow none, so there it is
    reported, not gated (attnvgg_export.verify.budgets.resolvable)."""
    from attnvgg_export.verify.gate import run_parity

    root = copy_build(digits_build.manifest.parent, tmp_path)
    report = run_parity(root / "manifest.json", log=lambda *_: None)
    assert report.trained
    assert report.passed, "\n".join(report.failures())
    budget = load_tolerances("se")["int8"]
    for entry in report.artifacts:
        if entry.skipped:  # OpenVINO on signed int8 without VNNI (attnvgg_export.verify.gate)
            assert entry.label == "model.int8-trt.onnx [openvino]"
            continue
        heldout = entry.cases["heldout"]
        assert heldout["images"] == 248
        if entry.precision == "int8":
            assert heldout["top1"] >= budget["top1_min"]
    # the same gate fails the same build held to 100% agreement on the held-out digits, on the
    # agreement metric int8 misses there (top-1 where it misses a digit, else top-5): agreement
    # is gated, not only reported
    int8 = [e for e in report.artifacts if e.precision == "int8" and not e.skipped]
    missed = [m for m in ("top1", "top5") if any(e.cases["heldout"][m] < 1.0 for e in int8)]
    if not missed:
        pytest.skip("int8 agreed with eager on every held-out digit's top-5: nothing to fail on")
    strict = tmp_path / "strict.toml"
    strict.write_text(f"[precision.int8]\n{missed[0]}_min = 1.0\n")
    strict_report = run_parity(root / "manifest.json", strict, log=lambda *_: None)
    assert any(f"heldout: {missed[0]}" in f for f in strict_report.failures())


class QdqReferenceRunner(OnnxRuntimeRunner):
    """A graph's arithmetic without any int8 kernel, the same on every CPU up to float rounding:
    ONNX Runtime at its basic level (graph rewrites only; tests/runtime/test_int8_kernels.py)."""

    def __init__(self, path, threads=None, exact_int8=False, memory_arena=True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        source = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name


def test_the_fallback_decides_as_on_any_cpu(digits_build, tmp_path, monkeypatch):
    """The layer fallback and the held-out figures on this CPU's kernels are those of the graphs'
    own arithmetic, which no CPU changes: the same decision with or without VNNI. (Before int8
    was read exactly, this CPU-independent reading and an AVX2 CPU's disagreed: the TensorRT
    graph missed its target with six layers in float on AVX2 where exact arithmetic needs two.)"""
    from attnvgg_export.graphs import fallback, precision
    from attnvgg_export.verify import explain

    root = copy_build(digits_build.manifest.parent, tmp_path)
    monkeypatch.setattr(precision, "OnnxRuntimeRunner", QdqReferenceRunner)
    monkeypatch.setattr(fallback, "OnnxRuntimeRunner", QdqReferenceRunner)
    monkeypatch.setattr(explain, "OnnxRuntimeRunner", QdqReferenceRunner)
    build_precision_graphs(root / "manifest.json", digits_build.config, log=lambda *_: None)
    here, anywhere = (json.loads(m.read_text()) for m in (digits_build.manifest, root / "manifest.json"))
    for target in ("int8-trt", "int8-cpu"):
        ours, theirs = here["calibration"]["fallback"][target], anywhere["calibration"]["fallback"][target]
        assert [f["node"] for f in ours["fallen_back"]] == [f["node"] for f in theirs["fallen_back"]]
        assert ours["met"] and theirs["met"]
        assert ours["final"] == pytest.approx(theirs["final"], rel=0.05)
    for graph in ("int8-trt-onnx", "int8-cpu-onnx"):
        ours, theirs = (m["parity"]["heldout-vs-eager"][graph] for m in (here, anywhere))
        assert ours["rel_l2"] == pytest.approx(theirs["rel_l2"], rel=0.05)
