"""OpenVINO as an edge target: IR artifacts in the manifest, gated, benchmarked, recommended."""


import numpy as np
import pytest

from attnvgg_export.bench.bench import Row
from attnvgg_export.bench.recommend import recommend
from attnvgg_export.verify.gate import run_parity
from attnvgg_runtime.manifest import (
    ManifestError,
    read_manifest,
    sha256_file,
    verify_artifacts,
    write_manifest,
)
from attnvgg_runtime.readers.cpu import openvino_has_bf16
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.readers.openvino import OpenVinoRunner
from tests.conftest import copy_build


def test_engines_stage_writes_fp32_and_int8_ir_with_their_weights(engines_build):
    manifest = read_manifest(engines_build / "manifest.json")
    ir = [a for a in manifest.artifacts if a.format == "openvino-ir"]
    assert {(a.path, a.precision) for a in ir} >= {
        ("engines/openvino/model.fp32.xml", "fp32"), ("engines/openvino/model.int8.xml", "int8")}
    for a in ir:
        assert a.target == "openvino-cpu"
        assert a.weights.sha256 == sha256_file(engines_build / a.weights.path)
        assert a.weights.bytes > a.bytes  # the weights are in the .bin
    bf16 = [a for a in ir if a.precision == "bf16"]
    assert len(bf16) == int(openvino_has_bf16())  # listed where this CPU computes bf16
    for a in bf16:
        assert a.path == "engines/openvino/model.fp32.xml"
        assert a.runtime_options == {"INFERENCE_PRECISION_HINT": "bf16"}
    assert not list((engines_build / "engines" / "openvino").glob(".*"))  # no temporaries left


def test_the_fp32_ir_computes_what_the_onnx_graph_computes(engines_build):
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 160), dtype=np.float32)
    expected = OnnxRuntimeRunner(engines_build / "model.onnx")(x)
    got = OpenVinoRunner(engines_build / "engines/openvino/model.fp32.xml", "f32")(x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_the_int8_ir_is_the_u8s8_graph_that_every_x86_cpu_computes_alike(engines_build):
    """Signed int8 activations saturate in OpenVINO's int8 kernels on CPUs without VNNI, so the
    IR is made from the int8-cpu graph (unsigned activations), whatever the build machine has."""
    from attnvgg_export.verify.structure import qdq_types

    assert qdq_types(engines_build / "model.int8-cpu.onnx")["activation"] == {"uint8"}
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 160), dtype=np.float32)
    ir = OpenVinoRunner(engines_build / "engines/openvino/model.int8.xml")(x)

    def rel_l2(graph):  # the IR against an ONNX graph, both under OpenVINO
        other = OpenVinoRunner(engines_build / graph)(x)
        return np.linalg.norm(ir - other) / np.linalg.norm(other)

    # the same graph (the IR's conversion moves a few values by one int8 step), not the other
    assert rel_l2("model.int8-cpu.onnx") < 0.5 * rel_l2("model.int8-trt.onnx")


def test_without_vnni_or_bf16_the_gate_skips_only_what_this_cpu_cannot_compute(
        engines_build, tmp_path, monkeypatch):
    from attnvgg_runtime.verify import readers

    monkeypatch.setattr(readers, "openvino_int8_has_vnni", lambda: False)
    monkeypatch.setattr(readers, "openvino_has_bf16", lambda: False)
    root = copy_build(engines_build, tmp_path)
    report = run_parity(root / "manifest.json", log=lambda *_: None)
    assert report.passed, report.failures()
    skipped = {a.label for a in report.artifacts if a.skipped}
    expected = {"model.int8-trt.onnx [openvino]"}
    if openvino_has_bf16():
        expected.add("engines/openvino/model.fp32.xml [openvino-bf16]")
    assert skipped == expected
    verified = {a.label for a in report.artifacts if not a.skipped}
    assert {"model.int8-trt.onnx [onnxruntime]", "model.int8-cpu.onnx [openvino]",
            "engines/openvino/model.int8.xml [openvino]"} <= verified


def test_an_ir_whose_weights_changed_is_refused(engines_build, tmp_path):
    root = copy_build(engines_build, tmp_path)
    with open(root / "engines/openvino/model.int8.bin", "r+b") as f:
        f.seek(64)
        f.write(b"\x7f\x7f")
    with pytest.raises(ManifestError, match="model.int8.bin no longer matches the sha256"):
        verify_artifacts(root / "manifest.json")


@pytest.mark.numerics
@pytest.mark.slow  # 17.9 s of make test (12:05 in the clean clone of a0733ef, AMX Xeon): test-slow
def test_the_gate_runs_every_ir_under_openvino(engines_build, tmp_path):
    root = copy_build(engines_build, tmp_path)
    report = run_parity(root / "manifest.json", log=lambda *_: None)
    assert report.passed, report.failures()
    readers = {(a.path, a.reader) for a in report.artifacts}
    assert ("engines/openvino/model.int8.xml", "openvino") in readers
    assert ("engines/openvino/model.fp32.xml", "openvino-bf16") in readers or not openvino_has_bf16()


def _rows():
    def row(runtime, artifact, target, precision="int8"):
        return Row(lambda x: x, precision, runtime, artifact, target)

    return {"eager fp32": Row(lambda x: x, "fp32", "eager"),
            "onnxruntime a.ort": row("onnxruntime", "a.ort", "onnxruntime-cpu"),
            "onnxruntime b.onnx": row("onnxruntime", "b.onnx", "onnxruntime-cpu", "fp32"),
            "openvino c.xml": row("openvino", "c.xml", "openvino-cpu"),
            "openvino-bf16 d.xml": row("openvino-bf16", "d.xml", "openvino-cpu", "bf16")}


def test_the_recommendation_is_the_fastest_artifact_that_passed_the_gate():
    results = {name: {"1": {"p50_ms": ms, "speedup_vs_eager": 100 / ms}}
               for name, ms in [("eager fp32", 100), ("onnxruntime a.ort", 20),
                                ("onnxruntime b.onnx", 50), ("openvino c.xml", 10),
                                ("openvino-bf16 d.xml", 15)]}
    passed = {("a.ort", "onnxruntime"), ("b.onnx", "onnxruntime"), ("d.xml", "openvino-bf16")}
    chosen = recommend(results, _rows(), passed, [1])["1"]
    assert chosen["onnxruntime-cpu"]["artifact"] == "a.ort"
    assert chosen["openvino-cpu"]["artifact"] == "d.xml"  # c.xml is faster but failed the gate
    assert "tensorrt" not in chosen
    assert chosen["onnxruntime-cpu"]["ties"] == [] and chosen["openvino-cpu"]["ties"] == []
    assert recommend(results, _rows(), None, [1]) == {}  # no gate run: no recommendation


def test_rows_within_five_percent_of_the_fastest_are_named_as_a_tie():
    results = {name: {"1": {"p50_ms": ms, "speedup_vs_eager": 100 / ms}}
               for name, ms in [("eager fp32", 100), ("onnxruntime a.ort", 20.0),
                                ("onnxruntime b.onnx", 20.9), ("openvino c.xml", 10),
                                ("openvino-bf16 d.xml", 10.6)]}
    passed = {("a.ort", "onnxruntime"), ("b.onnx", "onnxruntime"), ("c.xml", "openvino"),
              ("d.xml", "openvino-bf16")}
    chosen = recommend(results, _rows(), passed, [1])["1"]
    assert chosen["onnxruntime-cpu"]["artifact"] == "a.ort"
    assert chosen["onnxruntime-cpu"]["ties"] == ["onnxruntime b.onnx"]  # 4.5% slower
    assert chosen["openvino-cpu"]["ties"] == []  # 6% slower: not a tie
    # the slower row that failed the gate is never a tie either
    chosen = recommend(results, _rows(), passed - {("b.onnx", "onnxruntime")}, [1])["1"]
    assert chosen["onnxruntime-cpu"]["ties"] == []


def test_consumer_runs_the_ir_it_picks_and_matches_openvino(engines_build, tmp_path):
    from attnvgg_runtime import classify

    root = copy_build(engines_build, tmp_path)
    # the consumer runs only what the gate passed for its bytes
    assert run_parity(root / "manifest.json", log=lambda *_: None,
                      only={"engines/openvino/model.int8.xml"}).passed
    manifest = read_manifest(root / "manifest.json")
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), np.uint8)).save(image)
    assert classify.default_runtime(manifest) == "openvino"
    chosen = classify.pick_artifact(manifest, "int8", "openvino")
    assert chosen.path == "engines/openvino/model.int8.xml"
    results = classify.classify(root / "manifest.json", [image], "int8", runtime="openvino")
    batch = classify.preprocess(image, manifest.preprocessing)[None]
    logits = OpenVinoRunner(root / chosen.path, "f32")(batch)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for label, p in results[0]:
        assert abs(p - probabilities[0, int(label)]) < 1e-5
    manifest.bench = {"recommended": {"1": {"openvino-cpu": {
        "artifact": "engines/openvino/model.fp32.xml", "precision": "fp32"}}}}
    write_manifest(root / "manifest.json", manifest)
    choice = classify.choose(root / "manifest.json", manifest, "openvino")
    assert choice.artifact.precision == "fp32" and "the build's recommendation" in choice.why
