"""The CI gate: it passes a good build and fails a bad one, with files CI can read."""

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporter.manifest import ManifestError, read_manifest, sha256_file, write_manifest
from exporter.parity import breaches, load_tolerances, metrics, run_parity
from models import ConfigError

pytestmark = pytest.mark.numerics


@pytest.fixture
def build(precision_build):
    return precision_build


def _copy(build, tmp_path):
    root = tmp_path / "se"
    shutil.copytree(build, root)
    return root


def test_gate_passes_a_good_build_and_writes_json_junit_and_report(build, tmp_path):
    root = _copy(build, tmp_path)
    report = run_parity(root / "manifest.json", calib_source="noise", heldout=8, log=lambda *_: None)
    assert report.passed, report.failures()
    parity = json.loads((root / "parity.json").read_text())
    assert parity["passed"] and len(parity["artifacts"]) == 6
    assert all(len(a["cases"]) >= 3 for a in parity["artifacts"])  # held-out + shapes
    suite = ET.parse(root / "parity.junit.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 18
    text = (root / "report.md").read_text()
    assert "Gate: **passed**" in text and "parity-errors.png" in text
    assert (root / "parity-errors.png").read_bytes()[:4] == b"\x89PNG"
    assert read_manifest(root / "manifest.json")["parity"]["gate"]["passed"]


def test_gate_fails_a_model_with_one_conv_scaled_by_5_percent(build, tmp_path):
    """A broken export that still wrote a consistent manifest: only the numbers can catch it."""
    root = _copy(build, tmp_path)
    path = root / "model.onnx"
    model = onnx.load(str(path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))
    onnx.save(model, str(path))
    manifest = read_manifest(root / "manifest.json")
    entry = next(a for a in manifest["artifacts"] if a["path"] == "model.onnx")
    entry["sha256"] = sha256_file(path)
    write_manifest(root / "manifest.json", manifest)

    report = run_parity(root / "manifest.json", calib_source="noise", heldout=8, log=lambda *_: None)
    assert not report.passed
    assert all(f.startswith("model.onnx: ") for f in report.failures())
    assert any("rel_l2" in f for f in report.failures())
    suite = ET.parse(root / "parity.junit.xml").getroot()
    assert int(suite.get("failures")) >= 1
    assert "Gate: **FAILED**" in (root / "report.md").read_text()


def test_an_artifact_edited_after_the_build_is_refused(build, tmp_path):
    root = _copy(build, tmp_path)
    with open(root / "model.int8-cpu.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="model.int8-cpu.onnx no longer matches the sha256"):
        run_parity(root / "manifest.json", calib_source="noise", heldout=8, log=lambda *_: None)


def test_a_missing_artifact_is_refused(build, tmp_path):
    root = _copy(build, tmp_path)
    (root / "engines" / "ort" / "model.fp32.ort").unlink()
    with pytest.raises(ManifestError, match="model.fp32.ort listed in .* is missing"):
        run_parity(root / "manifest.json", calib_source="noise", heldout=8, log=lambda *_: None)


def test_tolerances_come_from_the_file_with_variant_overrides(tmp_path):
    default = load_tolerances("se")
    assert default["fp32"]["rel_l2_max"] == 1e-4
    assert load_tolerances("sa")["fp16"]["rel_l2_max"] == 1e-2 > default["fp16"]["rel_l2_max"]
    custom = tmp_path / "t.toml"
    custom.write_text("[precision.int8]\nrel_l2_max = 0.5\n[variant.se.int8]\ncosine_min = 0.5\n")
    assert load_tolerances("se", custom)["int8"] == {"rel_l2_max": 0.5, "cosine_min": 0.5}
    custom.write_text("[precision.int8]\nrel_l2 = 0.5\n")
    with pytest.raises(ConfigError, match="unknown keys \\['rel_l2'\\]"):
        load_tolerances("se", custom)


def test_nan_always_fails_and_agreement_is_gated_only_for_trained_weights():
    reference = np.random.default_rng(0).standard_normal((4, 10))
    shuffled = reference[:, ::-1].copy()
    budget = {"rel_l2_max": 10.0, "cosine_min": -1.0, "top1_min": 0.99}
    assert breaches(metrics(shuffled, reference), budget, trained=False) == []
    assert any("top1" in b for b in breaches(metrics(shuffled, reference), budget, trained=True))
    poisoned = reference.copy()
    poisoned[0, 0] = np.nan
    assert "NaN or Inf in the outputs" in breaches(metrics(poisoned, reference), budget, False)


def test_cli_exit_code_is_the_verdict(build, tmp_path, capsys):
    from exporter.cli import main

    root = _copy(build, tmp_path)
    args = ["parity", "--manifest", str(root / "manifest.json"), "--calib-noise", "--heldout-count", "8"]
    assert main(args) == 0
    strict = tmp_path / "strict.toml"
    strict.write_text("[precision.int8]\nrel_l2_max = 1e-6\n")
    assert main(args + ["--tolerances", str(strict)]) == 1
    assert "parity: FAILED" in capsys.readouterr().err
