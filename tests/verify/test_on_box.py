"""The proof travels with the build: golden I/O in Polygraphy's format, checked by `polygraphy run`
and by `attnvgg-runtime verify` on this box's kernels, without torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnvgg_runtime.manifest import read_manifest
from attnvgg_runtime.verify.golden import OPT_IMAGES, read_golden
from tests.conftest import copy_build
from tests.verify.test_gate import _scale_initializer

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = ("import runpy, sys\n"
            "for name in ('torch', 'torchvision'): sys.modules[name] = None  # as on a box without it\n"
            "sys.argv = ['attnvgg-runtime', *sys.argv[1:]]\n"
            "runpy.run_module('attnvgg_runtime', run_name='__main__')\n")


def _verify(manifest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, "verify", str(manifest)],
                          capture_output=True, text=True, timeout=900, cwd=manifest.parent)


def _conv_weight(model):
    return next(n for n in model.graph.node if n.op_type == "Conv").input[1]


def test_the_gate_writes_golden_io_that_the_manifest_lists_and_polygraphy_reads(gated_build):
    manifest = read_manifest(gated_build / "manifest.json")
    record = manifest.golden
    golden = read_golden(gated_build, record)
    assert set(golden) == set(json.loads((gated_build / "parity.json").read_text())["shapes"])
    for name, (batches, outputs) in golden.items():
        case = next(c for c in record["cases"] if c["name"] == name)
        assert len(batches) == case["iterations"] and all(len(b) == case["batch"] for b in batches)
        assert outputs.shape == (case["batch"] * case["iterations"], manifest.num_classes)
    heldout = json.loads((gated_build / "parity.json").read_text())["heldout"]["images"]
    assert len(golden["heldout"][1]) == min(OPT_IMAGES, heldout)  # 24 resolve top-1 >= 0.95
    assert record["budgets"]["int8"]["rel_l2_max"] > 0
    from polygraphy.json import load_json  # NVIDIA's own reader of the same files

    feeds = load_json(str(gated_build / record["inputs"]["path"]))
    assert sum(c["iterations"] for c in record["cases"]) == len(feeds)


@pytest.mark.parametrize("planted", [False, True])
def test_polygraphy_run_checks_the_fp32_graph_against_the_golden_outputs(gated_build, tmp_path, planted):
    """The command docs/tensorrt.md gives, with --onnxrt for --trt: pass on the build, fail on
    a conv weight scaled by 1.05."""
    root = copy_build(gated_build, tmp_path)
    if planted:
        _scale_initializer(root, "model.onnx", _conv_weight)
    polygraphy = Path(sys.executable).parent / "polygraphy"
    result = subprocess.run(
        [str(polygraphy), "run", "model.onnx", "--onnxrt", "--load-inputs", "golden/inputs.json",
         "--load-outputs", "golden/outputs.json", "--check-error-stat", "median", "--atol", "0",
         "--rtol", "1e-3"],
        capture_output=True, text=True, timeout=600, cwd=root)
    assert (result.returncode != 0) == planted, result.stdout[-3000:] + result.stderr[-2000:]
    assert ("FAILED" in result.stdout + result.stderr) == planted


def test_verify_passes_on_this_box_without_torch_and_names_what_it_cannot_read(gated_build, tmp_path):
    root = copy_build(gated_build, tmp_path)
    result = _verify(root / "manifest.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = json.loads((root / "verify.json").read_text())
    report = written["latest"] | {"results": written["results"]}
    assert report["passed"] and report["read"] >= 10 and report["cpu"]["model"]
    assert "verifying" in result.stdout and "int8 pair sums" in result.stdout
    manifest = read_manifest(root / "manifest.json")
    judged = {(r["path"], r["reader"]) for r in report["results"]}
    assert {a.path for a in manifest.artifacts} == {p for p, _ in judged}
    for r in report["results"]:  # everything not read is named, with the reason
        assert r["passed"] or r["unread"], r
    assert "artifact readings passed on this box" in result.stdout


def test_verify_fails_naming_artifact_reader_and_shape_when_an_artifact_is_subtly_wrong(
        gated_build, tmp_path):
    """One conv weight x1.05 in the fp32 graph, its sha256 updated in the manifest (a careless
    rebuild): the box's verification fails with exit 1 and says where."""
    root = copy_build(gated_build, tmp_path)
    _scale_initializer(root, "model.onnx", _conv_weight)
    result = _verify(root / "manifest.json")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "model.onnx [onnxruntime, onnxruntime" in result.stdout
    assert "heldout: rel_l2" in result.stdout and "FAIL" in result.stdout
    report = json.loads((root / "verify.json").read_text())
    failed = {(r["path"], r["reader"]): [f["message"] for f in r["failures"]]
              for r in report["results"] if r["failures"]}
    # a failed check is a record: which case, which check, measured against what
    fp32 = next(f for r in report["results"] if (r["path"], r["reader"]) == ("model.onnx", "onnxruntime")
                for f in r["failures"] if f["case"] == "heldout" and f["check"] == "rel_l2_max")
    assert fp32["measured"] > fp32["budget"] == 1e-4 and fp32["margin"] < 1
    assert {("model.onnx", "onnxruntime"), ("model.onnx", "openvino")} <= set(failed)
    # and what was converted from it is no longer what its conversion makes: the box sees that
    # the graph and its converted files are out of step, each named
    converted = set(failed) - {("model.onnx", "onnxruntime"), ("model.onnx", "openvino")}
    assert converted == {("engines/ort/model.fp32.ort", "onnxruntime"),
                         ("engines/openvino/model.fp32.xml", "openvino")}
    assert all("not what its conversion makes" in " ".join(failed[c]) for c in converted)


def test_verify_refuses_a_build_without_golden_io(engines_build, tmp_path):
    root = copy_build(engines_build, tmp_path)
    shutil.rmtree(root / "golden", ignore_errors=True)
    result = _verify(root / "manifest.json")
    assert result.returncode == 2 and "lists no golden I/O" in result.stderr


def test_verify_refuses_a_reader_it_does_not_know_and_fails_when_it_read_nothing(gated_build, tmp_path):
    root = copy_build(gated_build, tmp_path)
    typo = subprocess.run([sys.executable, "-c", NO_TORCH, "verify", str(root / "manifest.json"),
                           "--reader", "onnxruntim", "--case", "heldout", "--images", "2"],
                          capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2, typo.stdout[-2000:] + typo.stderr[-2000:]
    assert "no reader ['onnxruntim']" in typo.stderr and "onnxruntime, openvino" in typo.stderr
    assert not (root / "verify.json").exists()
    # a reader it knows, but one that reads nothing of this build (no plan here): an error, not a pass
    nothing = subprocess.run([sys.executable, "-c", NO_TORCH, "verify", str(root / "manifest.json"),
                              "--reader", "tensorrt", "--case", "heldout"],
                             capture_output=True, text=True, timeout=300)
    assert nothing.returncode == 2 and "nothing was verified on this box" in nothing.stderr, nothing.stderr


def test_a_fail_on_this_box_outlives_a_later_restricted_pass_and_classify_refuses(gated_build, tmp_path):
    """This box's kernels fail the int8 .ort (simulated by a budget this box holds it to that its
    reading breaks; the gate passed the same bytes on the build machine), then a verify restricted
    to the fp32 graph passes: verify.json keeps both, newest first, and classify still refuses the
    int8 model until a verify passes it again."""
    from attnvgg_runtime import classify
    from attnvgg_runtime.manifest import write_manifest
    from attnvgg_runtime.verify.on_box import Restriction, verify_build

    root = copy_build(gated_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    manifest.golden["budgets"]["int8"]["rel_l2_max"] = 1e-6  # what this box's kernels cannot meet
    write_manifest(root / "manifest.json", manifest)
    ort_int8 = "engines/ort/model.int8-cpu.ort"
    failed = verify_build(root / "manifest.json", log=lambda *_: None,
                          restriction=Restriction(("heldout",), (ort_int8,), ("onnxruntime",)))
    assert not failed["passed"]
    passed = verify_build(root / "manifest.json", log=lambda *_: None,
                          restriction=Restriction(("heldout",), ("model.onnx",), ("onnxruntime",)))
    assert passed["passed"]
    history = json.loads((root / "verify.json").read_text())["results"]
    assert [(r["path"], r["passed"]) for r in history] == [("model.onnx", True), (ort_int8, False)]
    assert all(r["cpu"] and r["when"] and r["reader_version"] and r["restricted"] for r in history)
    with pytest.raises(classify.ConsumerError, match="FAILED this box's own check, its latest"):
        classify.Classifier(root / "manifest.json", "int8", "onnxruntime", warn=lambda *_: None)
    told = []
    classify.Classifier(root / "manifest.json", "int8", "onnxruntime", allow_unverified=True,
                        warn=told.append)
    assert any("--allow-unverified" in line for line in told)
    # the box's budget restored (its kernels meet it): a new verify passes it, and classify runs it
    manifest.golden["budgets"]["int8"]["rel_l2_max"] = 0.12
    write_manifest(root / "manifest.json", manifest)
    assert verify_build(root / "manifest.json", log=lambda *_: None,
                        restriction=Restriction(("heldout",), (ort_int8,), ("onnxruntime",)))["passed"]
    classify.Classifier(root / "manifest.json", "int8", "onnxruntime", warn=lambda *_: None)
    assert len(json.loads((root / "verify.json").read_text())["results"]) == 3
