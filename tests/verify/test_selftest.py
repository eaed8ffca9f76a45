
"""`make parity-selftest`: the gate fails every planted bug, and the self-test fails when one
gets through."""

import json
import re

import pytest

from attnvgg_export.verify import selftest
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_runtime.manifest import verify_artifacts
from tests.conftest import copy_build


@pytest.mark.slow  # the whole self-test, 40 s on the AMX Xeon; CI's make parity-selftest runs it too
@pytest.mark.numerics
def test_the_gate_catches_every_planted_bug(engines_build, tmp_path):
    # the whole chain's build: OpenVINO IR with its weights files (and, where the CPU has bf16,
    # the fp32 IR listed a second time), which every planted copy must carry
    root = copy_build(engines_build, tmp_path)
    lines = []
    summary = selftest.run_selftest(root / "manifest.json", log=lines.append)
    assert summary["planted"] == len(selftest.BUGS) == 9 and summary["baseline_failed"] == []
    assert summary["caught"] == 9 and all(b["caught"] and b["by"] for b in summary["bugs"])
    by_bug = {b["bug"]: " ".join(b["by"]) for b in summary["bugs"]}
    assert "cast island is missing" in by_bug["fp16 cast island removed"]  # structure check
    assert "per-channel axis 1, TensorRT needs 0" in by_bug["int8 per-channel axis wrong"]
    assert "drift" in by_bug["int8 weight scales x1.05 on one layer"]  # too small for the budget
    # damage done to a converted file shows against its conversion redone from its source, far
    # past derived_max (the figure is the damage itself: 0.05-0.07 against a budget of 1e-5)
    for bug in ("int8 .ort: one conv's weights x1.05", "int8 OpenVINO IR .bin: one conv's weights x1.05"):
        assert "the file is not what its conversion makes" in by_bug[bug], by_bug[bug]
        figure = float(re.search(r"by rel L2 ([0-9.e-]+)", by_bug[bug]).group(1))
        assert figure > 100 * load_tolerances("se")["int8"]["derived_max"], by_bug[bug]
    # a fault of the converter itself: the conversion redone with the same converter agrees with
    # the file (no "not what its conversion makes"); only the budget on what the conversion
    # changed catches it, with a margin (measured excess over allowed excess) of at least 2
    name = "int8 OpenVINO IR: a converter fault, one conv's weight scales x1.08"
    converter = by_bug[name]
    checks = next(b["checks"] for b in summary["bugs"] if b["bug"] == name)
    assert "derived_excess_max" in checks and "derived_max" not in checks, checks
    mine, source, allowed = (float(v) for v in re.search(
        r"rel L2 ([0-9.e-]+) against ([0-9.e-]+) \(allowed ([0-9.e-]+)", converter).groups())
    assert (mine - source) >= 2 * (allowed - source), converter
    assert json.loads((root / "selftest.json").read_text()) == summary
    # the camera-frame graph reading its channels reversed: far past frame_max, against the graph
    # it wraps fed the same frames
    frame = next(b for b in summary["bugs"] if b["bug"] == "int8 camera-frame graph: channels swapped")
    assert "frame_max" in frame["checks"], frame
    figure = float(re.search(r"by rel L2 ([0-9.e-]+)", by_bug[frame["bug"]]).group(1))
    assert figure > 10 * load_tolerances("se")["int8"]["frame_max"], by_bug[frame["bug"]]
    assert "caught **9 of 9**" in (root / "report.md").read_text()
    verify_artifacts(root / "manifest.json")  # the build itself was not touched
    assert not list(root.glob(".selftest-*"))


def test_a_converter_fault_caught_only_by_another_check_is_missed(engines_build, tmp_path, monkeypatch):
    """A bug planted for one check counts as caught only where that check catches it: with the
    excess budget loosened until it cannot, the converter fault is MISSED by its check."""
    from attnvgg_export.verify import gate

    loose = tmp_path / "loose.toml"
    loose.write_text("[precision.int8]\nderived_excess_max = 100.0\n")
    real = gate.run_parity
    monkeypatch.setattr(selftest, "run_parity", lambda *a, **k: real(*a, **k, tolerances=loose))
    monkeypatch.setattr(selftest, "BUGS", tuple(b for b in selftest.BUGS if b.converter))
    root = copy_build(engines_build, tmp_path)
    with pytest.raises(selftest.SelfTestError, match="passed 1 planted bugs"):
        selftest.run_selftest(root / "manifest.json", log=lambda *_: None, converted_only=True)
    summary = json.loads((root / "selftest.json").read_text())
    assert summary["bugs"][0]["outcome"].startswith("MISSED")


def test_a_planted_bug_that_gets_through_fails_the_selftest(precision_build, tmp_path, monkeypatch):
    root = copy_build(precision_build, tmp_path)
    harmless = selftest.Bug("a change that changes nothing", "model.onnx",
                            lambda model: "nothing")
    monkeypatch.setattr(selftest, "BUGS", (harmless,))
    with pytest.raises(selftest.SelfTestError, match="passed 1 planted bugs: a change that"):
        selftest.run_selftest(root / "manifest.json", log=lambda *_: None)
    summary = json.loads((root / "selftest.json").read_text())
    assert summary["bugs"][0]["caught"] is False
    assert "| **MISSED** |" in (root / "report.md").read_text()


def test_a_build_that_fails_unplanted_reports_baseline_failed_not_caught(precision_build, tmp_path,
                                                                        monkeypatch):
    # a missed fallback target fails the int8-trt graph before anything is planted: every bug
    # planted there would "fail" the gate and prove nothing
    from attnvgg_runtime.manifest import read_manifest, write_manifest

    root = copy_build(precision_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    manifest.calibration["fallback"]["int8-trt"] |= {"met": False, "final": 0.5, "goal": 1.2}
    write_manifest(root / "manifest.json", manifest)
    monkeypatch.setattr(selftest, "BUGS", tuple(b for b in selftest.BUGS
                                                if b.artifact in ("model.int8-trt.onnx", "model.onnx")))
    with pytest.raises(selftest.SelfTestError, match="unplanted build already fails the gate for "
                                                     "model.int8-trt.onnx"):
        selftest.run_selftest(root / "manifest.json", log=lambda *_: None)
    summary = json.loads((root / "selftest.json").read_text())
    outcomes = {b["bug"]: b["outcome"] for b in summary["bugs"]}
    assert outcomes == {"fp32 conv weight x1.05": "caught",
                        "int8 weight scales x1.05 on one layer": "baseline failed",
                        "int8 per-channel axis wrong": "baseline failed"}
    assert summary["caught"] == 1 and summary["baseline_failed"] == ["model.int8-trt.onnx"]
