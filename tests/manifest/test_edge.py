"""What runtimes on other machines consume: the manifest contract, the box-side classifier
(attnvgg_runtime.classify), the Triton repository."""

import importlib.resources
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

from attnvgg_export.calibration.data import load_image
from attnvgg_export.calibration.preprocessing import Preprocessing
from attnvgg_export.convert.triton import manifest_to_triton
from attnvgg_export.runtime.eager import model_from_manifest, run_torch
from attnvgg_export.verify.gate import run_parity
from attnvgg_runtime import classify
from attnvgg_runtime.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    read_manifest,
    sha256_file,
    validate_manifest,
    write_manifest,
)
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from tests.conftest import copy_build

REPO = Path(__file__).resolve().parents[2]


def test_every_build_manifest_validates_and_a_broken_one_is_refused(precision_build, tmp_path):
    manifest = read_manifest(precision_build / "manifest.json")
    validate_manifest(manifest.to_json())
    broken = manifest.to_json()
    broken["artifacts"][0]["format"] = "tflite"
    with pytest.raises(ManifestError, match="artifacts/0/format: 'tflite' is not one of"):
        write_manifest(tmp_path / "manifest.json", Manifest.from_json(broken))
    assert not (tmp_path / "manifest.json").exists()
    del broken["dynamic"]
    with pytest.raises(ManifestError, match="'dynamic' is a required property"):
        validate_manifest(broken)


def test_a_schema_1_0_manifest_stays_readable(precision_build, tmp_path):
    """1.1 and 1.2 only added optional fields: a 1.0 build validates, and the consumer reads it."""
    manifest = read_manifest(precision_build / "manifest.json")
    assert manifest.schema_version == SCHEMA_VERSION and manifest.data_split is not None
    old = {k: v for k, v in manifest.to_json().items() if k != "data_split"} | {"schema_version": "1.0"}
    old["artifacts"] = [{k: v for k, v in a.items() if k != "exact_int8_session_options"}
                        for a in old["artifacts"]]
    validate_manifest(old)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(old))
    read = classify.load_manifest(path)
    assert read.schema_version == "1.0" and read.data_split is None
    assert classify.pick_artifact(read, "int8").path == "engines/ort/model.int8-cpu.ort"
    # another major version is refused, saying how to rebuild
    path.write_text(json.dumps(old | {"schema_version": "2.0"}))
    with pytest.raises(ManifestError, match="is not 1.x.*rebuild it with this toolchain"):
        read_manifest(path)


def test_schema_is_documented_field_by_field():
    schema = json.loads((importlib.resources.files("attnvgg_runtime") / "schema.json").read_text())
    doc = (REPO / "docs" / "manifest.md").read_text()
    for field in schema["properties"]:
        assert f"`{field}`" in doc, f"docs/manifest.md does not document {field}"


def test_consumer_preprocessing_is_the_toolchains():
    pre = Preprocessing.for_size(224, 192)
    for name in ("chelsea.png", "rocket.jpg", "coffee.png"):
        path = Path(str(importlib.resources.files("skimage") / "data" / name))
        np.testing.assert_allclose(classify.preprocess(path, pre.to_json()), load_image(path, pre),
                                   atol=2e-6)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """Digits no training step saw, as PNG files, as an integrator would have them."""
    from benchmarks import digits

    folder = tmp_path_factory.mktemp("digit-pngs")
    pixels, labels = digits.digit_images()
    paths = []
    for i in range(digits.UNSEEN_START, digits.UNSEEN_START + 48):
        paths.append(folder / f"{i}_{labels[i]}.png")
        Image.fromarray(pixels[i]).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def digits_manifest(digits_build, tmp_path_factory):
    """The session's trained digits build, with class names added to its manifest, gated (the
    consumer runs only what the gate passed for its bytes)."""
    root = copy_build(digits_build.manifest.parent, tmp_path_factory.mktemp("digits-edge"))
    relabel(root / "manifest.json", [f"digit {i}" for i in range(10)])
    assert run_parity(root / "manifest.json", log=lambda *_: None).passed
    return root / "manifest.json"


def relabel(manifest_path: Path, labels: list[str]) -> None:
    """The build's class names changed, in its manifest and in every file's metadata (as an export
    with LABELS would have written them; an .ort made again from its graph), sha256s relisted."""
    from attnvgg_export.convert.ort_format import onnx_to_ort
    from attnvgg_export.graphs.describe import describe_onnx

    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    manifest.labels = labels
    for artifact in manifest.artifacts:
        if artifact.format == "onnx":
            describe_onnx(root / artifact.path, manifest, artifact.input)
    for artifact in manifest.artifacts:
        if artifact.format == "ort":
            onnx_to_ort(root / artifact.source, root / artifact.path)
        artifact.sha256 = sha256_file(root / artifact.path)
        artifact.bytes = (root / artifact.path).stat().st_size
    write_manifest(manifest_path, manifest)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def _check_top5(results, probabilities: np.ndarray) -> None:
    """The consumer's top-5 (label, p) are the reference's probabilities at those labels, in
    descending order, led by the reference's most probable class (ties between near-equal small
    probabilities may order differently, so labels are not compared by rank)."""
    for result, p in zip(results, probabilities, strict=True):
        assert len(result) == 5
        indices = [int(label.split()[-1]) for label, _ in result]
        got = np.array([q for _, q in result])
        np.testing.assert_allclose(got, p[indices], atol=1e-5)
        assert (np.diff(got) <= 0).all() and got[0] >= p.max() - 1e-5


@pytest.mark.numerics
def test_consumer_computes_what_the_toolchain_computes(digits_manifest, digit_files):
    """fp32: the consumer's probabilities are eager PyTorch's; int8: they are the int8 artifact's
    as the toolchain runs it. So the consumer's preprocessing, artifact choice and decoding are
    right; how close int8 is to eager is the parity gate's business (and is only bounded loosely
    here, far from both chance and the gate's budget)."""
    from benchmarks import digits

    manifest = read_manifest(digits_manifest)
    pre = Preprocessing.from_json(manifest.preprocessing)
    batch = np.stack([load_image(p, pre) for p in digit_files])
    eager = run_torch(model_from_manifest(manifest), batch)
    int8 = OnnxRuntimeRunner(digits_manifest.parent / "engines/ort/model.int8-cpu.ort")(batch)
    fp32_results = classify.classify(digits_manifest, digit_files, "fp32")
    int8_results = classify.classify(digits_manifest, digit_files, "int8")
    _check_top5(fp32_results, _softmax(eager))
    _check_top5(int8_results, _softmax(int8))
    assert np.mean(int8.argmax(1) == eager.argmax(1)) >= 0.8  # chance: 0.1
    truth = np.array([int(p.stem.split("_")[1]) for p in digit_files])
    assert digits.accuracy(eager, truth) > 5 * digits.CHANCE  # a trained model on real digits
    assert fp32_results[0][0][0].startswith("digit ")


def test_consumer_cli_prints_top5_and_refuses_an_edited_artifact(digits_manifest, digit_files,
                                                                 tmp_path):
    ok = _consume(digits_manifest, digit_files[0])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("digit ") == 5
    root = tmp_path / "copy"
    shutil.copytree(digits_manifest.parent, root)
    with open(root / "engines" / "ort" / "model.fp32.ort", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02")
    bad = _consume(root / "manifest.json", digit_files[0])
    assert bad.returncode == 2 and "does not match the sha256" in bad.stderr


def test_the_box_package_imports_nothing_but_numpy_pillow_and_the_runtimes():
    """Read from the source with ast: every import in box/attnvgg_runtime is the standard library,
    numpy, PIL, a runtime, or the package itself; at module level, only the first three and the
    package (tests/test_box.py installs its wheel where torch is not installed, and runs it)."""
    import ast

    base = {"numpy", "PIL", "attnvgg_runtime", "__future__"} | set(sys.stdlib_module_names)
    # imported on first use only: the runtimes; torch by the TensorRT reader (its extra: CUDA
    # buffers); polygraphy and jsonschema where golden I/O and manifests are written (the build);
    # model_signing and cryptography where a signature or key is made or checked ([signing])
    deferred = {"onnxruntime", "openvino", "tensorrt", "torch", "polygraphy", "jsonschema",
                "model_signing", "cryptography"}
    found: dict[str, set[str]] = {}
    for path in (REPO / "box" / "attnvgg_runtime").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                root = name.split(".")[0]
                allowed = base if id(node) in top else base | deferred
                if root not in allowed:
                    found.setdefault(root, set()).add(path.name)
    assert found == {}


def test_triton_repository_parses_and_matches_the_manifest(engines_build, tmp_path):
    from tritonclient.grpc import model_config_pb2

    root = copy_build(engines_build, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    configs = manifest_to_triton(root / "manifest.json", tmp_path / "repo", log=lambda *_: None)
    served = [a for a in manifest.artifacts if a.format in ("onnx", "openvino-ir")]
    assert len(configs) == len(served) >= 6
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        assert config.max_batch_size == manifest.dynamic["batch"]["max"]
        if path.parent.name.endswith("_frame"):  # a camera-frame artifact: uint8 frames
            assert [i.name for i in config.input] == ["frame"] and list(config.input[0].dims) == [-1, -1, 3]
            assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
        else:
            assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [3, -1, -1]
            assert config.input[0].data_type == model_config_pb2.TYPE_FP32
        assert list(config.output[0].dims) == [manifest.num_classes]
        # an int8 model is served from where the gate holds it to its budget (min_side)
        int8 = "int8" in path.parent.name
        top = manifest.dynamic["height"]["max"]
        assert config.parameters["height_range"].string_value == ("64" if int8 else "32") + f":224:{top}:32"
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        if "openvino" in path.parent.name:
            assert config.backend == "openvino" and not config.platform
            assert sorted(p.name for p in (path.parent / "1").iterdir()) == ["model.bin", "model.xml"]
        else:
            assert config.platform == "onnxruntime_onnx"
            assert (path.parent / "1" / "model.onnx").is_file()
    names = sorted(p.parent.name for p in configs)
    assert names[:5] == ["se_onnx_fp16", "se_onnx_fp32", "se_onnx_int8_cpu", "se_onnx_int8_cpu_frame",
                         "se_onnx_int8_trt"]
    assert {"se_openvino_ir_fp32", "se_openvino_ir_int8", "se_openvino_ir_int8_frame"} <= set(names)
    if "se_openvino_ir_bf16" in names:
        bf16 = text_format.Parse((tmp_path / "repo/se_openvino_ir_bf16/config.pbtxt").read_text(),
                                 model_config_pb2.ModelConfig())
        assert bf16.parameters["INFERENCE_PRECISION_HINT"].string_value == "bf16"


def _consume(manifest: Path, image: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnvgg_runtime", "classify", str(manifest),
                           str(image), *flags], capture_output=True, text=True, timeout=120)


def test_consumer_refuses_an_artifact_that_failed_the_gate_and_says_so_when_told(
        digits_manifest, digit_files, tmp_path):
    """As after a new CALIB_DIR that makes int8 fail: the gate judged the int8 model and failed
    it (here by a budget no int8 graph meets); the consumer refuses it, runs it only when told,
    and says so; the fp32 model, never judged by that run, is refused too."""
    root = copy_build(digits_manifest.parent, tmp_path)
    strict = tmp_path / "strict.toml"
    strict.write_text("[precision.int8]\nrel_l2_max = 1e-6\n")
    int8 = "engines/ort/model.int8-cpu.ort"
    assert not run_parity(root / "manifest.json", strict, log=lambda *_: None, only={int8}).passed
    refused = _consume(root / "manifest.json", digit_files[0], "--precision", "int8")
    assert refused.returncode == 2
    assert f"refusing to run it: {int8} under onnxruntime" in refused.stderr
    assert "it FAILED the gate" in refused.stderr and not refused.stdout
    told = _consume(root / "manifest.json", digit_files[0], "--precision", "int8", "--allow-unverified")
    assert told.returncode == 0 and told.stdout.count("digit ") == 5
    assert "WARNING: --allow-unverified: running" in told.stderr and "NOT verified" in told.stderr
    fp32 = _consume(root / "manifest.json", digit_files[0], "--precision", "fp32")
    assert fp32.returncode == 2 and "no verdict for it under onnxruntime" in fp32.stderr


def test_consumer_refuses_bytes_other_than_those_the_gate_judged(digits_manifest, digit_files, tmp_path):
    """A rebuild that rewrote an artifact and its sha256 but kept the old verdict (what the
    stages no longer do) does not pass: the verdict is bound to the bytes."""
    root = copy_build(digits_manifest.parent, tmp_path)
    manifest = read_manifest(root / "manifest.json")
    entry = next(a for a in manifest.artifacts if a.path == "engines/ort/model.fp32.ort")
    path = root / entry.path
    path.write_bytes(path.read_bytes() + b"\0")  # still loads; other bytes
    entry.sha256, entry.bytes = sha256_file(path), path.stat().st_size
    write_manifest(root / "manifest.json", manifest)
    refused = _consume(root / "manifest.json", digit_files[0], "--precision", "fp32")
    assert refused.returncode == 2 and "the gate judged other bytes" in refused.stderr


def test_int8_min_side_profile_and_triton_range_come_from_one_rule():
    from types import SimpleNamespace

    from attnvgg_runtime.manifest import Artifact, declare_served_ranges, served_range

    def side(lo, opt, hi):
        return {"min": lo, "opt": opt, "max": hi, "multiple_of": 32}

    dynamic = {"batch": {"min": 1, "opt": 1, "max": 32}, "height": side(32, 224, 448),
               "width": side(32, 224, 448)}
    assert served_range(dynamic, "int8")["height"]["min"] == 64
    assert served_range(dynamic, "fp16") == dynamic
    def built(dynamic, *precisions):
        return SimpleNamespace(dynamic=dynamic, artifacts=[
            Artifact(f"m.{p}.onnx", "onnx", p, "any", 1, "") for p in precisions])

    manifest = built(dynamic, "int8", "fp16")
    declare_served_ranges(manifest)
    assert [a.min_side for a in manifest.artifacts] == [64, None]
    # an opt size under 64 px is gated for int8 at its own size: nothing to declare
    small = {**dynamic, "height": side(32, 32, 64), "width": side(32, 32, 64)}
    manifest = built(small, "int8")
    declare_served_ranges(manifest)
    assert manifest.artifacts[0].min_side is None and served_range(small, "int8") == small
