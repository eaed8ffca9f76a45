"""A verdict, a recommendation or a report belongs to the bytes it was made about: a stage that
rewrites artifacts leaves none about the old bytes, and the bench recommends only what the gate
passed for the bytes listed now."""

import json

import pytest

from attnvgg_export.bench.recommend import gate_passed
from attnvgg_export.convert.engines import build_engines
from attnvgg_export.manifest.lifecycle import DERIVED_FILES, passing_verdict
from attnvgg_export.verify.gate import run_parity
from attnvgg_runtime.manifest import read_manifest, write_manifest
from tests.conftest import copy_build


def _gated(engines_build, tmp_path):
    root = copy_build(engines_build, tmp_path)
    report = run_parity(root / "manifest.json", log=lambda *_: None)
    manifest = read_manifest(root / "manifest.json")
    return root, report, manifest


@pytest.mark.slow  # 23.4 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_the_gate_binds_each_verdict_to_bytes_reader_version_cpu_and_budget(engines_build, tmp_path):
    root, report, manifest = _gated(engines_build, tmp_path)
    parity = json.loads((root / "parity.json").read_text())
    listed = {a.path: a.sha256 for a in manifest.artifacts}
    assert parity["cpu"]["model"] and isinstance(parity["cpu"]["isa"], list)
    assert set(parity["budgets"]) == {a.precision for a in manifest.artifacts}
    for entry in parity["artifacts"]:
        assert entry["sha256"] == listed[entry["path"]]
        assert entry["reader_version"].split()[0] in ("onnxruntime-gpu", "onnxruntime", "openvino")
        assert entry["budget"] == parity["budgets"][entry["precision"]]
    verdicts = manifest.parity["gate"]["verdicts"]
    assert {(v["path"], v["reader"]) for v in verdicts} == {
        (a["path"], a["reader"]) for a in parity["artifacts"]}
    passed = gate_passed(manifest)
    assert passed == {(v["path"], v["reader"]) for v in verdicts if v["passed"]}
    assert ("model.onnx", "onnxruntime") in passed


@pytest.mark.slow  # 26.7 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_a_stage_that_rewrites_artifacts_removes_every_verdict_and_report_about_the_old_bytes(
        engines_build, tmp_path):
    root, _, manifest = _gated(engines_build, tmp_path)
    manifest.bench = {"recommended": {"1": {"onnxruntime-cpu": {"artifact": "model.onnx"}}}}
    write_manifest(root / "manifest.json", manifest)
    (root / "bench.json").write_text("{}")
    assert (root / "parity.json").is_file() and (root / "report.md").is_file()
    lines = []
    build_engines(root / "manifest.json", "ort", log=lines.append)
    after = read_manifest(root / "manifest.json")
    assert "gate" not in after.parity and after.bench is None and after.report is None
    assert not [name for name in DERIVED_FILES if (root / name).exists()]
    assert any("removed what was derived from the old ones" in line for line in lines)
    assert gate_passed(after) is None  # the bench recommends nothing until the gate runs again
    assert not any(passing_verdict(after, a, "onnxruntime") for a in after.artifacts)


@pytest.mark.slow  # three gate runs and two benches: 18-33 s
def test_a_new_gate_run_keeps_a_recommendation_only_while_it_passes(engines_build, tmp_path):
    """The recommendation names (artifact, runtime) pairs: a gate run that passes them again for
    the same bytes keeps it; one that does not pass one of them (here: does not judge it) drops
    it, bench.json with it."""
    root, _, manifest = _gated(engines_build, tmp_path)

    def recommend(path: str) -> None:
        manifest = read_manifest(root / "manifest.json")
        manifest.bench = {"recommended": {"1": {"onnxruntime-cpu": {
            "row": f"onnxruntime {path}", "artifact": path, "reader": "onnxruntime", "precision": "fp32"}}}}
        write_manifest(root / "manifest.json", manifest)

    recommend("model.onnx")
    run_parity(root / "manifest.json", log=lambda *_: None, only={"model.onnx"})
    assert read_manifest(root / "manifest.json").bench["recommended"]
    recommend("engines/ort/model.fp32.ort")
    (root / "bench.json").write_text("{}")
    lines = []
    run_parity(root / "manifest.json", log=lines.append, only={"model.onnx"})
    after = read_manifest(root / "manifest.json")
    assert after.bench is None and not (root / "bench.json").exists()
    assert any("names an artifact this run did not pass" in line for line in lines)
    assert {v["path"] for v in after.parity["gate"]["verdicts"]} == {"model.onnx"}
    # a recommendation that does not say which reader timed it is not taken on its word
    recommend("model.onnx")
    manifest = read_manifest(root / "manifest.json")
    del manifest.bench["recommended"]["1"]["onnxruntime-cpu"]["reader"]
    write_manifest(root / "manifest.json", manifest)
    run_parity(root / "manifest.json", log=lambda *_: None, only={"model.onnx"})
    assert read_manifest(root / "manifest.json").bench is None
