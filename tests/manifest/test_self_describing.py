"""Artifacts an edge application can load alone: every file carries its labels, preprocessing and
input (attnvgg_runtime.metadata), which a consumer with only a runtime installed reads; the box
refuses a file whose metadata and manifest disagree; the camera-frame artifacts (uint8 NHWC in)
pass the gate beside the artifacts they wrap, and a frame fed by hand classifies as the manifest's
path does; the box's bench measures each artifact's first result (cold start)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from attnvgg_export.graphs.describe import write_metadata
from attnvgg_runtime import cli
from attnvgg_runtime.artifacts import load_runner
from attnvgg_runtime.classify import Classifier, classify_model_file
from attnvgg_runtime.files import sha256_file
from attnvgg_runtime.manifest import read_manifest, write_manifest
from attnvgg_runtime.metadata import (
    KEYS,
    PREFIX,
    MetadataMismatch,
    describe,
    from_frames,
    ir_metadata,
    metadata_of_file,
    onnx_metadata,
    to_frames,
)
from attnvgg_runtime.verify.readers import runner_for
from tests.conftest import copy_build

FRAME_ONNX, FRAME_IR = "model.int8-cpu.frame.onnx", "engines/openvino/model.int8.frame.xml"

# what the issue asks of a consumer with nothing but ONNX Runtime (and PIL to decode a PNG): the
# file's own metadata gives the class names and the preprocessing; the frame artifact takes the
# uint8 pixels as they are (docs/edge.md shows the same lines)
ONNXRUNTIME_ALONE = """
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
classes = json.loads(meta["attnvgg.classes"])
pre = json.loads(meta["attnvgg.preprocessing"])
image = Image.open(sys.argv[2]).convert("RGB")
w, h = image.size
image = image.resize((pre["resize"], int(pre["resize"] * h / w)) if w <= h else
                     (int(pre["resize"] * w / h), pre["resize"]), Image.BILINEAR)
top, left = round((image.size[1] - pre["crop"][0]) / 2), round((image.size[0] - pre["crop"][1]) / 2)
frame = np.asarray(image.crop((left, top, left + pre["crop"][1], top + pre["crop"][0])))[None]
logits = session.run(None, {session.get_inputs()[0].name: frame})[0][0]
print(json.dumps([classes[i] for i in np.argsort(-logits, kind="stable")[:5]]))
assert not [m for m in sys.modules if m.startswith(("attnvgg", "torch"))]
"""


def _relist(root, path):
    """The manifest's sha256 of ``path`` updated, as a careless rebuild would."""
    manifest = read_manifest(root / "manifest.json")
    entry = manifest.artifact(path)
    entry.sha256, entry.bytes = sha256_file(root / path), (root / path).stat().st_size
    write_manifest(root / "manifest.json", manifest)


def test_every_artifact_says_what_its_manifest_says(gated_build):
    manifest = read_manifest(gated_build / "manifest.json")
    cpu_files = [a for a in manifest.artifacts if a.format != "plan"]
    assert {a.path for a in cpu_files} >= {"model.onnx", "model.fp16.onnx", "model.int8-trt.onnx",
                                           "model.int8-cpu.onnx", FRAME_ONNX, "engines/ort/model.fp32.ort",
                                           "engines/ort/model.int8-cpu.ort", FRAME_IR}
    for artifact in cpu_files:
        found = metadata_of_file(gated_build / artifact.path, artifact.format)
        expected = describe(manifest, artifact.input)
        assert {k: found.get(k) for k in expected} == expected, artifact.path
        assert len(expected) == len(KEYS)
    frame_input = json.loads(metadata_of_file(gated_build / FRAME_IR, "openvino-ir")[PREFIX + "input"])
    assert frame_input["dtype"] == "uint8" and frame_input["layout"] == "NHWC"


@pytest.mark.parametrize("path", ["model.int8-cpu.onnx", FRAME_IR, "engines/ort/model.int8-cpu.ort"])
def test_a_file_whose_metadata_disagrees_with_its_manifest_is_refused(gated_build, tmp_path, path):
    """Another model's labels in the file, its sha256 relisted: the box's loaders and the gate's
    readers refuse it, naming the key."""
    root = copy_build(gated_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    artifact = manifest.artifact(path)
    other = describe(manifest, artifact.input)
    other[PREFIX + "classes"] = json.dumps([f"cat-{i}" for i in range(manifest.num_classes)])
    if path.endswith(".ort"):  # a flatbuffer: made again from its source graph, relabelled
        from attnvgg_export.convert.ort_format import onnx_to_ort

        source = tmp_path / "relabelled.onnx"
        source.write_bytes((root / artifact.source).read_bytes())
        write_metadata(source, other)
        onnx_to_ort(source, root / path)
    elif path.endswith(".xml"):
        text = (root / path).read_text()
        old = describe(manifest, artifact.input)[PREFIX + "classes"]
        (root / path).write_text(text.replace(old.replace('"', "&quot;"),
                                              other[PREFIX + "classes"].replace('"', "&quot;")))
    else:
        write_metadata(root / path, other)
    _relist(root, path)
    manifest = read_manifest(root / "manifest.json")
    artifact = manifest.artifact(path)
    runtime = "openvino" if path.endswith(".xml") else "onnxruntime"
    with pytest.raises(MetadataMismatch, match="attnvgg.classes"):
        load_runner(root / "manifest.json", artifact, runtime)
    with pytest.raises(MetadataMismatch, match="attnvgg.classes"):
        runner_for(artifact, root, manifest, runtime)


def test_a_file_without_metadata_under_a_manifest_that_promises_it_is_refused(gated_build, tmp_path):
    root = copy_build(gated_build, tmp_path)
    path = root / "model.int8-cpu.onnx"
    data = path.read_bytes()
    found = onnx_metadata(data)
    keep = {k: v for k, v in found.items() if k[len(PREFIX):] not in KEYS}
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, keep)
    onnx.save(model, str(path))
    _relist(root, "model.int8-cpu.onnx")
    manifest = read_manifest(root / "manifest.json")
    with pytest.raises(MetadataMismatch, match="carries no attnvgg metadata"):
        load_runner(root / "manifest.json", manifest.artifact("model.int8-cpu.onnx"), "onnxruntime")


def test_frames_round_trip_exactly_for_images_made_of_8_bit_pixels():
    pre = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    frames = np.random.default_rng(0).integers(0, 256, (3, 17, 23, 3)).astype(np.uint8)
    for order in ("RGB", "BGR"):
        images = from_frames(frames, pre, order)
        assert images.shape == (3, 3, 17, 23) and images.dtype == np.float32
        assert np.array_equal(to_frames(images, pre, order), frames)
    with pytest.raises(MetadataMismatch, match="'GBR' is not one of RGB, BGR"):
        to_frames(images, pre, "GBR")  # an edited manifest's order is refused, not read as RGB


def test_the_frame_artifacts_pass_the_gate_and_compute_what_they_wrap(gated_build):
    """The gate read both frame artifacts against eager and against the artifact each wraps, fed
    the same frames normalized in numpy: 0 difference measured (elementwise float arithmetic)."""
    parity = json.loads((gated_build / "parity.json").read_text())
    frames = [a for a in parity["artifacts"] if a["path"] in (FRAME_ONNX, FRAME_IR)]
    assert {(a["path"], a["reader"]) for a in frames} == {(FRAME_ONNX, "onnxruntime"), (FRAME_IR, "openvino")}
    for entry in frames:
        assert entry["passed"] and not entry["skipped"], entry
        assert entry["cases"]["heldout"]["rel_l2_vs_reconverted"] <= 1e-6, entry["path"]


def _digits_png(digits_build, tmp_path) -> tuple:
    """A held-out digit as a PNG at the model's size, and the build's root."""
    root = digits_build.manifest.parent
    manifest = read_manifest(digits_build.manifest)
    from attnvgg_export.verify.cases import heldout_images

    image = heldout_images(manifest).images[:1]
    png = tmp_path / "digit.png"
    Image.fromarray(to_frames(image, manifest.preprocessing)[0]).resize((40, 40), Image.NEAREST).save(png)
    return root, png


def test_a_consumer_with_only_onnxruntime_names_the_classes_the_box_names(digits_build, tmp_path):
    """The trained digits build: the frame artifact read by the lines above (ONNX Runtime, numpy
    and PIL only, the file's own metadata) and `attnvgg-runtime classify` with the manifest give
    the same top 5; and so does the box given the file alone."""
    root, png = _digits_png(digits_build, tmp_path)
    done = subprocess.run([sys.executable, "-c", ONNXRUNTIME_ALONE, str(root / FRAME_ONNX), str(png)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    alone = json.loads(done.stdout)
    with_manifest = Classifier(root / "manifest.json", precision="int8", runtime="onnxruntime",
                               allow_unverified=True, warn=lambda _: None).classify_files([png])[0]
    assert alone == [label for label, _ in with_manifest]
    file_only = classify_model_file(root / FRAME_ONNX, [png], allow_unverified=True, warn=lambda _: None)[0]
    assert [label for label, _ in file_only] == alone


def test_a_model_file_alone_runs_only_when_asked(gated_build, tmp_path, capsys):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(png)
    assert cli.main(["classify", str(gated_build / FRAME_IR), str(png)]) == 2
    assert "--allow-unverified" in capsys.readouterr().err
    assert cli.main(["classify", str(gated_build / FRAME_IR), str(png), "--allow-unverified"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{png}: ") and "no verdict checked" in err


def test_the_ir_metadata_is_read_from_its_xml(gated_build):
    found = ir_metadata((gated_build / FRAME_IR).read_bytes())
    assert json.loads(found[PREFIX + "input"])["name"] == "frame"
    with pytest.raises(MetadataMismatch, match="cannot read the IR's metadata"):
        ir_metadata(b"<net><rt_info>")


def test_bench_measures_each_artifacts_first_result(gated_build, tmp_path):
    """A fresh process's first result per artifact, and with OpenVINO's model cache warm: a
    positive number of seconds each, bound to the bytes it timed."""
    root = copy_build(gated_build, tmp_path)
    assert cli.main(["bench", str(root / "manifest.json"), "--batches", "1", "--seconds", "0.05"]) == 0
    report = json.loads((root / "box-bench.json").read_text())
    manifest = read_manifest(root / "manifest.json")
    starts = {(s["runtime"], s["artifact"], s["precision"]): s for s in report["first_result"]}
    timed = {(r["runtime"], r["artifact"], r["precision"]) for r in report["rows"]}
    assert set(starts) == timed
    for (runtime, path, precision), start in starts.items():
        assert start["cold_s"] > 0 and start["sha256"] == next(
            a.sha256 for a in manifest.artifacts if a.path == path and a.precision == precision)
        assert ("cache_warm_s" in start) == (runtime == "openvino")
    assert cli.main(["bench", str(root / "manifest.json"), "--batches", "1", "--seconds", "0.05",
                     "--no-first-result"]) == 0
    assert json.loads((root / "box-bench.json").read_text())["first_result"] == []
