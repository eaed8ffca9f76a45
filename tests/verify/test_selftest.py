"""`make parity-selftest`: the gate fails every planted bug, and the self-test fails when one
gets through."""

import json

import pytest

from exporter.manifest.manifest import verify_artifacts
from exporter.verify import selftest
from tests.conftest import copy_build


@pytest.mark.numerics
def test_the_gate_catches_every_planted_bug(engines_build, tmp_path):
    # the whole chain's build: OpenVINO IR with its weights files (and, where the CPU has bf16,
    # the fp32 IR listed a second time), which every planted copy must carry
    root = copy_build(engines_build, tmp_path)
    lines = []
    summary = selftest.run_selftest(root / "manifest.json", log=lines.append)
    assert summary["planted"] == len(selftest.BUGS) == 5
    assert summary["caught"] == 5 and all(b["caught"] and b["by"] for b in summary["bugs"])
    by_bug = {b["bug"]: " ".join(b["by"]) for b in summary["bugs"]}
    assert "cast island is missing" in by_bug["fp16 cast island removed"]  # structure check
    assert "per-channel axis 1, TensorRT needs 0" in by_bug["int8 per-channel axis wrong"]
    assert "drift" in by_bug["int8 weight scales x1.05 on one layer"]  # too small for the budget
    assert json.loads((root / "selftest.json").read_text()) == summary
    assert "caught **5 of 5**" in (root / "report.md").read_text()
    verify_artifacts(root / "manifest.json")  # the build itself was not touched
    assert not list(root.glob(".selftest-*"))


def test_a_planted_bug_that_gets_through_fails_the_selftest(precision_build, tmp_path, monkeypatch):
    root = copy_build(precision_build, tmp_path)
    harmless = selftest.Bug("a change that changes nothing", "model.onnx",
                            lambda model: "nothing")
    monkeypatch.setattr(selftest, "BUGS", (harmless,))
    with pytest.raises(selftest.SelfTestError, match="passed 1 planted bugs: a change that"):
        selftest.run_selftest(root / "manifest.json", log=lambda *_: None)
    summary = json.loads((root / "selftest.json").read_text())
    assert summary["bugs"][0]["caught"] is False
    assert "**NO**" in (root / "report.md").read_text()
