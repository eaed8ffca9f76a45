"""The toolchain as a library: docs/api.md's example runs as written (a model in memory through
every stage, a typed result read back from the build's files), build() refuses what it cannot
do with the toolchain's clear errors, and the wheel installs one top-level package and one
command."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import attnvgg_export
from attnvgg_export.models import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a whole build (every stage, parity, bench): `make test-slow`, in CI
def test_the_docs_example_builds_a_model_in_memory_and_reads_back_a_typed_result(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)  # out="build/api" lands in the test's folder
    scope: dict = {}
    exec(compile(code, "docs/api.md", "exec"), scope)
    result = scope["result"]
    assert isinstance(result, attnvgg_export.BuildResult) and result.passed
    assert result.manifest == Path("build/api/se/manifest.json") and result.report.is_file()
    assert (tmp_path / "build/api/se/model.safetensors").is_file()  # the model, written first
    paths = {a.path for a in result.artifacts}
    assert {"model.onnx", "model.fp16.onnx", "model.int8-cpu.onnx"} <= paths
    assert {v.path for v in result.verdicts} == paths and all(v.sha256 for v in result.verdicts)
    assert {"onnxruntime-cpu", "openvino-cpu"} <= set(result.ship)
    assert all(s.speedup_vs_eager > 0 for s in result.ship.values())
    again = attnvgg_export.read_result(result.manifest)
    assert again.verdicts == result.verdicts and again.ship == result.ship
    # what to ship names the camera-frame artifacts and the first result of what it ships
    ship = result.report.read_text().split("## What to ship", 1)[1].split("\n## ", 1)[0]
    assert "Camera frames for ONNX Runtime" in ship and "model.int8-cpu.frame.onnx" in ship
    assert "engines/openvino/model.int8.frame.xml" in ship and "First result of" in ship
    starts = json.loads((result.manifest.parent / "bench.json").read_text())["first_result"]
    assert starts and all(s["cold_s"] > 0 for s in starts.values())


def test_build_refuses_a_checkpoint_and_a_model_together(tmp_path):
    from attnvgg_export import models

    model = models.create_model("se", num_classes=10, width=0.125)
    with pytest.raises(ConfigError, match="not both"):
        attnvgg_export.build("se", checkpoint=tmp_path / "x.pt", model=model, out=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        attnvgg_export.build("se", checkpoint=tmp_path / "missing.pt", out=tmp_path, log=lambda *_: None)


def test_the_wheel_installs_one_top_level_package_and_the_command(tmp_path):
    import shutil

    try:
        made = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:  # setuptools builds in the source tree (as `make dist` cleans up after it)
        for scratch in ("build/lib", "build/bdist.linux-x86_64"):
            shutil.rmtree(ROOT / scratch, ignore_errors=True)
    assert made.returncode == 0, made.stderr[-2000:]
    wheel = next(tmp_path.glob("attnvgg_export-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"attnvgg_export"}, top
    assert "attnvgg_export/verify/tolerances.toml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "attnvgg-export = attnvgg_export.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
