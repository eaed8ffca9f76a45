"""The precision stage end to end, on the trained digits fixture (benchmarks/digits.py)."""

import json

import numpy as np
import pytest

from benchmarks import digits
from benchmarks.precision_table import fixture_manifest
from exporter.manifest import FORMATS, PRECISIONS, TARGETS, sha256_file
from exporter.precision import PrecisionConfig, build_precision_graphs
from exporter.runners import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def digits_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    manifest_path = fixture_manifest("se", root)
    npz = digits.write_heldout_npz(root / "digits-heldout.npz")
    config = PrecisionConfig(calib_source=str(npz), calib_count=256, heldout_count=344,
                             metric="top1")
    lines = []
    build_precision_graphs(manifest_path, config, log=lines.append)
    return manifest_path, config, lines


def test_trained_fixture_int8_accuracy_within_one_point(digits_build):
    manifest_path, _, _ = digits_build
    parity = json.loads(manifest_path.read_text())["parity"]["heldout-vs-eager"]
    eager = parity["eager-fp32"]["accuracy"]
    assert eager > 0.9, "the fixture must be trained for its accuracy gaps to mean anything"
    assert parity["eager-fp32"]["images"] == 344
    for name in ("int8-trt-onnx", "int8-cpu-onnx", "int8-cpu-ort"):
        assert eager - parity[name]["accuracy"] <= 0.01, (name, parity[name])
        assert parity[name]["top1_agreement"] >= 0.97
    assert abs(eager - parity["fp16-onnx"]["accuracy"]) <= 0.003
    assert parity["fp32-ort"]["top1_agreement"] == 1.0


def test_every_artifact_is_listed_with_its_sha256(digits_build):
    manifest_path, _, _ = digits_build
    manifest = json.loads(manifest_path.read_text())
    listed = {a["path"]: a for a in manifest["artifacts"]}
    assert set(listed) == {"model.onnx", "model.fp16.onnx", "model.int8-trt.onnx",
                           "model.int8-cpu.onnx", "engines/ort/model.fp32.ort",
                           "engines/ort/model.int8-cpu.ort"}
    for path, entry in listed.items():
        assert entry["sha256"] == sha256_file(manifest_path.parent / path)
        assert entry["format"] in FORMATS and entry["precision"] in PRECISIONS
        assert entry["target"] in TARGETS
    assert listed["model.int8-trt.onnx"]["target"] == "tensorrt"
    assert listed["engines/ort/model.int8-cpu.ort"]["format"] == "ort"


def test_ort_format_model_runs_like_its_onnx_graph(digits_build):
    manifest_path, _, _ = digits_build
    root = manifest_path.parent
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 64), dtype=np.float32)
    onnx_out = OnnxRuntimeRunner(root / "model.int8-cpu.onnx")(x)
    ort_out = OnnxRuntimeRunner(root / "engines/ort/model.int8-cpu.ort")(x)
    np.testing.assert_allclose(ort_out, onnx_out, rtol=1e-5, atol=1e-5 * np.abs(onnx_out).max())


def test_second_run_reuses_the_calibration_cache(digits_build):
    manifest_path, config, lines = digits_build
    first = json.loads(manifest_path.read_text())["calibration"]
    assert not first["cached"] and first["method"] == "percentile" and first["images"] == 256
    build_precision_graphs(manifest_path, config, log=lambda *_: None)
    second = json.loads(manifest_path.read_text())["calibration"]
    assert second["cached"] and second["ranges"] == first["ranges"]


def test_calibrating_a_share_at_the_largest_size_adds_those_images(precision_build, tmp_path):
    import shutil

    root = tmp_path / "se"
    shutil.copytree(precision_build, root)
    build_precision_graphs(root / "manifest.json", PrecisionConfig(
        calib_source="noise", calib_count=16, heldout_count=8, largest_share=0.25),
        log=lambda *_: None)
    calibration = json.loads((root / "manifest.json").read_text())["calibration"]
    assert calibration["images"] == 16 and not calibration["cached"]  # 12 at 224 + 4 at 448
