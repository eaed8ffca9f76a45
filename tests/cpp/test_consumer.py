"""The C++ consumer (examples/cpp: OpenVINO's C++ API from its wheel, stb from Debian), built by
`make test-cpp` and checked here on a build's golden held-out images: the program reads the class
names and preprocessing from the camera-frame IR alone, and must compute what Python's OpenVINO
computes of that file (same kernels: rel L2 <= 1e-5, the same top-5) and what eager PyTorch
computed (the gate's int8 budgets); a planted bug in the artifact must fail the same check.

`make test-cpp` sets ATTNVGG_CPP_BINARY (the program) and ATTNVGG_CPP_BUILD (a build's folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnvgg_runtime.manifest import read_manifest
from attnvgg_runtime.metadata import class_names, to_frames
from attnvgg_runtime.readers.openvino import OpenVinoRunner
from attnvgg_runtime.verify.golden import read_golden
from attnvgg_runtime.verify.measures import relative_l2

pytestmark = pytest.mark.cpp

FRAME_IR = "engines/openvino/model.int8.frame.xml"
IMAGES = 8
SAME_KERNELS = 1e-5  # the program and Python's OpenVINO run one file on one library


@pytest.fixture(scope="module")
def consumer() -> tuple[Path, Path]:
    binary, build = os.environ.get("ATTNVGG_CPP_BINARY"), os.environ.get("ATTNVGG_CPP_BUILD")
    if not binary or not build:
        pytest.fail("ATTNVGG_CPP_BINARY and ATTNVGG_CPP_BUILD are unset: run these tests with "
                    "`make test-cpp`")
    return Path(binary), Path(build)


@pytest.fixture(scope="module")
def golden_frames(consumer, tmp_path_factory) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The first held-out golden images as PNG frames at the model's size, their uint8 frames
    and eager's logits for them."""
    _, build = consumer
    manifest = read_manifest(build / "manifest.json")
    batches, outputs = read_golden(build, manifest.golden)["heldout"]
    frames = to_frames(np.concatenate(batches)[:IMAGES], manifest.preprocessing)
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"heldout-{i}.png")
        Image.fromarray(frame).save(paths[-1])
    return paths, frames, outputs[:IMAGES]


def run_consumer(binary: Path, model: Path, images: list[Path], tmp: Path) -> tuple[np.ndarray, list[str]]:
    """The program's logits and its printed lines for ``images``."""
    logits = tmp / "logits.txt"
    done = subprocess.run([str(binary), str(model), *map(str, images), "--logits", str(logits)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.loadtxt(logits, ndmin=2, dtype=np.float32), done.stdout.splitlines()


def consumer_findings(logits: np.ndarray, lines: list[str], python: np.ndarray, eager: np.ndarray,
                      names: list[str], budget: dict) -> list[str]:
    """What is wrong with the program's outputs: against Python's OpenVINO on the same file and
    frames, and against eager PyTorch within the gate's int8 budgets; [] where nothing is."""
    found = []
    between = relative_l2(logits, python)
    if between > SAME_KERNELS:
        found.append(f"differs from Python's OpenVINO by rel L2 {between:.3g} (allowed {SAME_KERNELS:g})")
    for i, line in enumerate(lines):
        top5 = [names[c] for c in np.argsort(-python[i], kind="stable")[:5]]
        printed = [item.rsplit(" ", 1)[0].strip() for item in line.split(":", 1)[1].split(",")]
        if printed != top5:
            found.append(f"image {i}: printed top-5 {printed}, Python's OpenVINO {top5}")
    against_eager = relative_l2(logits, eager)
    if against_eager > budget["rel_l2_max"]:
        found.append(f"rel L2 {against_eager:.3g} against eager (int8 budget {budget['rel_l2_max']:g})")
    worst = max(relative_l2(a[None], b[None]) for a, b in zip(logits, eager, strict=True))
    if worst > budget["rel_l2_image_max"]:
        found.append(f"worst image's rel L2 {worst:.3g} against eager "
                     f"(budget {budget['rel_l2_image_max']:g})")
    return found


def _budget(build: Path) -> dict:
    return read_manifest(build / "manifest.json").parity["gate"]["budgets"]["int8"]


def test_the_program_computes_what_the_gate_passed(consumer, golden_frames, tmp_path):
    binary, build = consumer
    paths, frames, eager = golden_frames
    manifest = read_manifest(build / "manifest.json")
    logits, lines = run_consumer(binary, build / FRAME_IR, paths, tmp_path)
    python = OpenVinoRunner(build / FRAME_IR)(frames)
    assert logits.shape == (IMAGES, manifest.num_classes) and len(lines) == IMAGES
    assert consumer_findings(logits, lines, python, eager, class_names(manifest), _budget(build)) == []


def test_a_planted_bug_in_the_artifact_fails_the_check(consumer, golden_frames, tmp_path):
    """The frame IR rebuilt with its frames' channels read as BGR while its metadata still says
    RGB: what a consumer sees is wrong, and the check says so."""
    from attnvgg_export.convert.openvino_ir import ir_with_frame_input
    from attnvgg_runtime.metadata import describe, frame_input

    binary, build = consumer
    paths, frames, eager = golden_frames
    manifest = read_manifest(build / "manifest.json")
    planted = tmp_path / "model.int8.frame.xml"
    ir_with_frame_input(build / "engines/openvino/model.int8.xml", planted, manifest.preprocessing,
                        channel_order="BGR", metadata=describe(manifest, frame_input("RGB")))
    logits, lines = run_consumer(binary, planted, paths, tmp_path)
    python = OpenVinoRunner(build / FRAME_IR)(frames)  # the build's file: what the gate passed
    findings = consumer_findings(logits, lines, python, eager, class_names(manifest), _budget(build))
    assert any("Python's OpenVINO by rel L2" in f for f in findings), findings


def test_the_program_resizes_a_photo_and_names_its_classes(consumer, tmp_path):
    """An image not at the model's size: resized and cropped by the program (stb's filter, so close
    to, not equal to, Python's); five named classes out."""
    binary, build = consumer
    manifest = read_manifest(build / "manifest.json")
    photo = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (manifest.dynamic["height"]["opt"] + 37,
                                                        manifest.dynamic["width"]["opt"] + 61, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(photo)
    logits, lines = run_consumer(binary, build / FRAME_IR, [photo], tmp_path)
    names = class_names(manifest)
    printed = [item.rsplit(" ", 1)[0].strip() for item in lines[0].split(":", 1)[1].split(",")]
    assert logits.shape == (1, manifest.num_classes) and np.isfinite(logits).all()
    assert len(printed) == min(5, len(names)) and set(printed) <= set(names)


def test_a_float_input_artifact_is_refused_naming_the_frame_ir(consumer, tmp_path):
    binary, build = consumer
    done = subprocess.run([str(binary), str(build / "engines/openvino/model.int8.xml"), "x.png"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "model.int8.frame.xml" in done.stderr, done.stderr
    assert shutil.which(str(binary))
