"""Classify images with a build's artifact on this box: what an edge integrator runs, and reads.

Reads manifest.json, chooses the artifact and runtime (``choose``: the fastest this box's own
bench timed among the artifacts that passed the gate, else the build's recommendation, else
fp32; or the precision asked for), refuses it unless the build's gate passed it under that
runtime for these very bytes and this box's own check (verify.json) did not fail it
(``allow_unverified`` runs it anyway, saying so), checks its sha256, applies the recorded
preprocessing to image files, runs, and returns the top classes with their labels. What it ran,
and why that one, goes to stderr.

    attnvgg-runtime classify build/se/manifest.json photo1.jpg photo2.png [--precision int8]
    attnvgg-runtime classify build/se/manifest.json photo.jpg --runtime openvino
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from attnvgg_runtime.artifacts import RUNTIMES, installed_runtimes, load_runner, runnable
from attnvgg_runtime.bench import read_box_bench
from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.manifest import Artifact, Manifest, read_manifest
from attnvgg_runtime.readers import reader_version
from attnvgg_runtime.readers.cpu import cpu_identity
from attnvgg_runtime.verdicts import box_verdict, gate_unverified_reason, reader_of


class ConsumerError(ToolchainError):
    """The artifact cannot be run as asked; the message says why and what to do."""


def load_manifest(path: str | Path) -> Manifest:
    """The manifest, typed (schema 1.x; another major version is refused, saying what to do)."""
    return read_manifest(path)


@dataclass(frozen=True)
class Choice:
    artifact: Artifact
    runtime: str
    why: str

    def describe(self) -> str:
        a = self.artifact
        return (f"running {a.path} ({a.precision}) under {reader_version(self.runtime)}: "
                f"{self.why}")


def default_runtime(manifest: Manifest) -> str:
    """openvino where it is installed and the build has OpenVINO IR, else onnxruntime."""
    has_ir = any(a.format == "openvino-ir" for a in manifest.artifacts)
    return "openvino" if has_ir and "openvino" in installed_runtimes() else "onnxruntime"


def pick_artifact(manifest: Manifest, precision: str, runtime: str = "onnxruntime") -> Artifact:
    """The artifact of ``precision`` that ``runtime`` serves (ORT format before ONNX)."""
    candidates = [a for a in runnable(manifest, runtime) if a.precision == precision]
    if not candidates:
        available = sorted({(a.precision, a.target) for a in manifest.artifacts})
        raise ConsumerError(f"no {precision} artifact for {RUNTIMES[runtime][0]}; the build has "
                            f"{available}")
    return sorted(candidates, key=lambda a: (a.format != "ort", a.input is not None))[0]


def _usable(manifest: Manifest, root: Path, artifact: Artifact, runtime: str, cpu_model: str) -> bool:
    reader = reader_of(artifact, runtime)
    mine = box_verdict(root, artifact, reader, cpu_model)
    return gate_unverified_reason(manifest, artifact, reader) is None and (mine is None or mine["passed"])


def choose(manifest_path: Path, manifest: Manifest, runtime: str | None = None,
           precision: str | None = None) -> Choice:
    """Which artifact to run here, and why: ``precision`` where asked; else the fastest at batch 1
    in this box's own bench (box-bench.json, for these bytes, on this CPU model) among those that
    passed the gate and not failed this box's verify; else the build's recommendation (timed on
    the build machine's CPU, which the reason names); else fp32."""
    root = Path(manifest_path).parent
    cpu = cpu_identity()["model"]
    runtimes = [runtime] if runtime else [r for r in installed_runtimes() if runnable(manifest, r)]
    if not runtimes:
        raise ConsumerError("neither onnxruntime nor openvino is installed here: "
                            "install the runtime wheel's [onnxruntime] or [openvino] extra (docs/edge.md)")
    if precision:
        chosen_runtime = runtime or default_runtime(manifest)
        return Choice(pick_artifact(manifest, precision, chosen_runtime), chosen_runtime,
                      f"--precision {precision} asked for")
    box = read_box_bench(root, cpu)
    if box:
        current = {(a.path, a.precision): a for a in manifest.artifacts}
        timed = []
        for row in box["rows"]:
            artifact = current.get((row["artifact"], row["precision"]))
            if (row["batch"] == 1 and row["runtime"] in runtimes and artifact is not None
                    and artifact.sha256 == row["sha256"]
                    and _usable(manifest, root, artifact, row["runtime"], cpu)):
                timed.append((row["p50_ms"], row["runtime"], artifact))
        timed.sort(key=lambda t: t[:2])
        if timed:
            ms, chosen_runtime, artifact = timed[0]
            return Choice(artifact, chosen_runtime,
                          f"the fastest at batch 1 ({ms:.1f} ms) of {len(timed)} verified rows this "
                          f"box's own bench timed ({root / 'box-bench.json'}, {cpu})")
    recommended = (manifest.bench or {}).get("recommended", {}).get("1", {})
    build_cpu = (manifest.bench or {}).get("cpu", {}).get("model", "an unrecorded CPU")
    for candidate in runtimes:
        entry = recommended.get(RUNTIMES[candidate][0])
        if entry:
            artifact = next(a for a in manifest.artifacts if a.path == entry["artifact"]
                            and a.precision == entry["precision"])
            where = ("the build machine's CPU is this box's model" if build_cpu == cpu else
                     f"timed on the build machine ({build_cpu}), not here: `attnvgg-runtime bench "
                     f"{manifest_path}` times this box and classify then chooses by it")
            return Choice(artifact, candidate, f"the build's recommendation at batch 1 ({where})")
    chosen_runtime = runtime or default_runtime(manifest)
    return Choice(pick_artifact(manifest, "fp32", chosen_runtime), chosen_runtime,
                  "fp32: the build has no speed recommendation for this runtime and this box has "
                  "not been timed")


def check_verdict(manifest_path: Path, manifest: Manifest, artifact: Artifact, runtime: str,
                  allow_unverified: bool, warn=print) -> None:
    """Refuse ``artifact`` under ``runtime`` unless the build's gate passed it for its bytes and
    this box's own verify did not fail it; with ``allow_unverified``, run it and say so."""
    reader = reader_of(artifact, runtime)
    reason = gate_unverified_reason(manifest, artifact, reader)
    mine = box_verdict(Path(manifest_path).parent, artifact, reader, cpu_identity()["model"])
    if reason is None and mine is not None and not mine["passed"]:
        reason = (f"it FAILED this box's own check, its latest for these bytes on this CPU "
                  f"({mine['reader_version'] or reader}, {mine['when'] or 'an earlier run'}; "
                  f"{mine['file']}); `attnvgg-runtime verify` passing it again lifts this")
    if reason is None:
        return
    what = (f"{artifact.path} under {runtime} has no passing verdict for its bytes "
            f"(sha256 {artifact.sha256[:12]}...): {reason}")
    if not allow_unverified:
        raise ConsumerError(f"refusing to run it: {what}. Run `make parity` on the build (or "
                            f"choose another artifact), or pass --allow-unverified to run it "
                            f"without that proof")
    warn(f"WARNING: --allow-unverified: running {what}. Its outputs are NOT verified against "
         f"the trained model.")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(values * (255 / 65535)).clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def preprocess(path: Path, pre: dict) -> np.ndarray:
    """Shorter side to pre['resize'] (PIL bilinear), center crop, RGB, /255, mean/std, CHW."""
    try:
        with Image.open(path) as image:
            image = to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConsumerError(f"cannot read image {path} ({type(e).__name__}: {e}); give a JPEG, "
                            f"PNG, BMP or WebP photograph") from None
    width, height = image.size
    short, long = sorted((width, height))
    new_long = int(pre["resize"] * long / short)
    size = (pre["resize"], new_long) if width <= height else (new_long, pre["resize"])
    image = image.resize(size, Image.BILINEAR)
    crop_h, crop_w = pre["crop"]
    top = int(round((image.size[1] - crop_h) / 2.0))
    left = int(round((image.size[0] - crop_w) / 2.0))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


class Classifier:
    """One artifact of a build, loaded for this box: ``classify_array`` on a preprocessed NCHW
    batch, ``classify_files`` on image files. ``choice`` says what runs and why."""

    def __init__(self, manifest_path: str | Path, precision: str | None = None,
                 runtime: str | None = None, allow_unverified: bool = False, warn=None) -> None:
        warn = warn or (lambda line: print(line, file=sys.stderr))
        self.manifest_path = Path(manifest_path)
        self.manifest = load_manifest(self.manifest_path)
        self.choice = choose(self.manifest_path, self.manifest, runtime, precision)
        warn(self.choice.describe())
        check_verdict(self.manifest_path, self.manifest, self.choice.artifact, self.choice.runtime,
                      allow_unverified, warn)
        self.run = load_runner(self.manifest_path, self.choice.artifact, self.choice.runtime)
        self.labels = self.manifest.labels or [str(i) for i in range(self.manifest.num_classes)]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        artifact = self.choice.artifact
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ConsumerError(f"expected an NCHW batch with 3 channels, got shape {batch.shape}")
        if min(batch.shape[2:]) < (artifact.min_side or 0):  # outside what its verdict covers
            raise ConsumerError(f"{artifact.path} is verified only for H and W >= "
                                f"{artifact.min_side} (min_side); the input is "
                                f"{batch.shape[2]}x{batch.shape[3]}: use --precision fp32")
        return self.run(np.ascontiguousarray(batch, dtype=np.float32))

    def classify_array(self, batch: np.ndarray, top: int = 5) -> list[list[tuple[str, float]]]:
        return top_classes(self.logits(batch), self.labels, top)

    def classify_files(self, images: list[Path], top: int = 5) -> list[list[tuple[str, float]]]:
        pre = self.manifest.preprocessing
        return self.classify_array(np.stack([preprocess(Path(p), pre) for p in images]), top)


def classify(manifest_path: Path, images: list[Path], precision: str | None = None, top: int = 5,
             runtime: str | None = None, allow_unverified: bool = False,
             warn=None) -> list[list[tuple[str, float]]]:
    return Classifier(manifest_path, precision, runtime, allow_unverified, warn).classify_files(images, top)


def top_classes(logits: np.ndarray, labels: list[str], top: int = 5) -> list[list[tuple[str, float]]]:
    """Each image's ``top`` classes by softmax probability, with their names."""
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    return [[(labels[i], float(p[i])) for i in np.argsort(-p)[:top]] for p in probabilities]


MODEL_SUFFIXES = (".onnx", ".ort", ".xml")


def classify_model_file(path: Path, images: list[Path], top: int = 5, allow_unverified: bool = False,
                        warn=None) -> list[list[tuple[str, float]]]:
    """Top classes of image files by one artifact file alone: its labels, preprocessing and input
    read from the file's own metadata (attnvgg_runtime.metadata), no manifest. Without a manifest
    no verdict can be checked, so it runs only with ``allow_unverified``, and says so."""
    from attnvgg_runtime.metadata import FrameInput, ir_metadata, read_keys, session_metadata

    warn = warn or (lambda line: print(line, file=sys.stderr))
    path = Path(path)
    if not path.is_file():
        raise ConsumerError(f"{path} does not exist: give a build's manifest.json or a model file")
    if not allow_unverified:
        raise ConsumerError(f"{path} is a model file, not a build's manifest.json: no gate verdict can "
                            f"be checked for it. Give its build's manifest.json, or pass "
                            f"--allow-unverified to run it on its own metadata")
    if path.suffix == ".xml":
        from attnvgg_runtime.readers.openvino import OpenVinoRunner

        runner, found, runtime = OpenVinoRunner(path), ir_metadata(path.read_bytes()), "openvino"
    else:
        from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(path)
        found, runtime = session_metadata(runner.session), "onnxruntime"
    try:
        keys = read_keys(found)
    except ToolchainError as e:
        raise ConsumerError(f"{path}: {e}") from None
    pre, the_input = keys["preprocessing"], keys["input"]
    warn(f"WARNING: --allow-unverified: running {path} under {reader_version(runtime)} on its own "
         f"metadata ({keys['variant']}, model {keys['model_id']}, {keys['toolchain']}); no verdict "
         f"checked (no manifest)")
    if the_input.get("dtype") == "uint8":
        runner = FrameInput(runner, pre, the_input.get("channel_order", "RGB"))
    batch = np.stack([preprocess(Path(p), pre) for p in images])
    return top_classes(runner(batch), keys["classes"], top)
