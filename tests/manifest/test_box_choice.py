"""Which artifact `attnvgg-runtime classify` runs on a box, and why: this box's own bench first
(for these bytes, on this CPU model), among the artifacts that passed the gate and not failed
this box's verify; else the build's recommendation; else fp32. The choice and its reason are
printed on stderr."""

import json

from attnvgg_runtime import classify
from attnvgg_runtime.manifest import read_manifest
from attnvgg_runtime.readers.cpu import cpu_identity
from tests.conftest import copy_build

FP32, INT8 = "engines/ort/model.fp32.ort", "engines/ort/model.int8-cpu.ort"


def _bench(root, manifest, times: dict, cpu_model: str) -> None:
    by_path = {a.path: a for a in manifest.artifacts}
    rows = [{"runtime": "onnxruntime", "artifact": path, "sha256": by_path[path].sha256,
             "precision": by_path[path].precision, "runtime_options": {}, "batch": 1, "p50_ms": ms}
            for path, ms in times.items()]
    (root / "box-bench.json").write_text(json.dumps({"cpu": {"model": cpu_model}, "rows": rows}))


def test_the_box_chooses_by_its_own_bench_and_its_own_verify(gated_build, tmp_path):
    root = copy_build(gated_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    here = cpu_identity()["model"]

    fallback = classify.choose(root / "manifest.json", manifest, "onnxruntime")
    assert fallback.artifact.precision == "fp32" and "not been timed" in fallback.why

    _bench(root, manifest, {FP32: 10.0, INT8: 4.0}, "another CPU")  # copied from another box
    assert classify.choose(root / "manifest.json", manifest, "onnxruntime").artifact.path != INT8

    _bench(root, manifest, {FP32: 10.0, INT8: 4.0}, here)
    chosen = classify.choose(root / "manifest.json", manifest, "onnxruntime")
    assert chosen.artifact.path == INT8 and "this box's own bench" in chosen.why
    assert "4.0 ms" in chosen.describe() and "under onnxruntime" in chosen.describe()

    # this box's verify failed the int8 model for these bytes: the next fastest that passed runs
    int8 = next(a for a in manifest.artifacts if a.path == INT8)
    (root / "verify.json").write_text(json.dumps({"cpu": {"model": here}, "results": [
        {"path": INT8, "reader": "onnxruntime", "sha256": int8.sha256, "passed": False,
         "unread": None}]}))
    assert classify.choose(root / "manifest.json", manifest, "onnxruntime").artifact.path == FP32
    lines = []
    try:
        classify.Classifier(root / "manifest.json", "int8", "onnxruntime", warn=lines.append)
    except classify.ConsumerError as e:
        assert "FAILED this box's own check" in str(e)
    else:
        raise AssertionError("an artifact this box's verify failed was run")
    assert lines and lines[0].startswith(f"running {INT8} (int8) under onnxruntime")


def test_the_python_api_loads_classifies_an_array_and_a_file_and_verifies(gated_build, tmp_path):
    import numpy as np
    from PIL import Image

    import attnvgg_runtime
    from attnvgg_runtime import Classifier, Restriction, load_manifest, verify_build

    root = copy_build(gated_build, tmp_path)
    assert load_manifest(root / "manifest.json").schema_version.startswith("1.")
    told = []
    classifier = Classifier(root / "manifest.json", "fp32", "onnxruntime", warn=told.append)
    assert told == [classifier.choice.describe()] and "--precision fp32 asked for" in told[0]
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    top = classifier.classify_array(batch, top=3)
    assert len(top) == 2 and all(len(r) == 3 for r in top)
    assert {label for label, _ in top[0]} <= set(classifier.labels)
    assert [p for _, p in top[0]] == sorted((p for _, p in top[0]), reverse=True)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 70, 3), np.uint8)).save(photo)
    assert len(classifier.classify_files([photo])[0]) == 5
    report = verify_build(root / "manifest.json", log=lambda *_: None,
                          restriction=Restriction(("heldout",), ("model.onnx",), ("onnxruntime",), 8))
    assert report["passed"] and report["read"] == 1 and report["restricted"]["images"] == 8
    assert callable(attnvgg_runtime.box_identity) and callable(attnvgg_runtime.bench_box)


def test_the_box_bench_times_every_cpu_artifact_and_classify_then_chooses_by_it(gated_build, tmp_path):
    from attnvgg_runtime.artifacts import installed_runtimes, runnable
    from attnvgg_runtime.bench import bench_box

    root = copy_build(gated_build, tmp_path)
    report = bench_box(root / "manifest.json", batches=(1,), seconds=0.01, log=lambda *_: None,
                       first_result=False)  # tests/manifest/test_self_describing.py times those
    manifest = read_manifest(root / "manifest.json")
    expected = {(r, a.path, a.precision) for r in installed_runtimes() for a in runnable(manifest, r)}
    assert {(r["runtime"], r["artifact"], r["precision"]) for r in report["rows"]} == expected
    assert all(r["p50_ms"] > 0 and r["iterations"] >= 5 for r in report["rows"])
    assert json.loads((root / "box-bench.json").read_text())["cpu"]["model"] == cpu_identity()["model"]
    chosen = classify.choose(root / "manifest.json", manifest)
    fastest = min((r for r in report["rows"] if classify._usable(manifest, root, next(
        a for a in manifest.artifacts if a.path == r["artifact"] and a.precision == r["precision"]),
        r["runtime"], cpu_identity()["model"])), key=lambda r: r["p50_ms"])
    assert (chosen.artifact.path, chosen.runtime) == (fastest["artifact"], fastest["runtime"])
    assert "this box's own bench" in chosen.why
