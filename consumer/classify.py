#!/usr/bin/env python3
"""Reference consumer of an attnvgg-export build: what an edge integrator copies.

Needs only numpy, Pillow and onnxruntime (no torch, nothing else from this project). Reads
manifest.json, picks the artifact for a runtime and precision, verifies its sha256, applies the
recorded preprocessing to image files, runs, and prints the top-5 classes with their labels.

    python classify.py build/se/manifest.json photo1.jpg photo2.png [--precision int8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SUPPORTED_SCHEMA = "1."  # major version 1


class ConsumerError(Exception):
    pass


def load_manifest(path: Path) -> dict:
    manifest = json.loads(Path(path).read_text())
    if not str(manifest.get("schema_version", "")).startswith(SUPPORTED_SCHEMA):
        raise ConsumerError(f"{path}: schema_version {manifest.get('schema_version')!r} is not "
                            f"1.x; this consumer reads manifest schema 1")
    return manifest


def pick_artifact(manifest: dict, precision: str, target: str = "onnxruntime-cpu") -> dict:
    """The artifact for ONNX Runtime on the CPU: ORT format first, then ONNX."""
    candidates = [a for a in manifest["artifacts"] if a["precision"] == precision
                  and a["target"] in (target, "any") and a["format"] in ("ort", "onnx")]
    if not candidates:
        available = sorted({(a["precision"], a["target"]) for a in manifest["artifacts"]})
        raise ConsumerError(f"no {precision} artifact for {target}; the build has {available}")
    return sorted(candidates, key=lambda a: a["format"] != "ort")[0]


def verified_path(manifest_path: Path, artifact: dict) -> Path:
    path = Path(manifest_path).parent / artifact["path"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != artifact["sha256"]:
        raise ConsumerError(f"{path} does not match the sha256 in the manifest: it was changed "
                            f"or damaged after the build; refusing to run it")
    return path


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(values * (255 / 65535)).clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def preprocess(path: Path, pre: dict) -> np.ndarray:
    """Shorter side to pre['resize'] (PIL bilinear), center crop, RGB, /255, mean/std, CHW."""
    with Image.open(path) as image:
        image = to_rgb(image)
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


def classify(manifest_path: Path, images: list[Path], precision: str = "fp32",
             top: int = 5) -> list[list[tuple[str, float]]]:
    import onnxruntime as ort

    manifest = load_manifest(manifest_path)
    artifact = pick_artifact(manifest, precision)
    session = ort.InferenceSession(str(verified_path(manifest_path, artifact)),
                                   providers=["CPUExecutionProvider"])
    batch = np.stack([preprocess(p, manifest["preprocessing"]) for p in images])
    logits = session.run([manifest["output"]["name"]], {manifest["input"]["name"]: batch})[0]
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    labels = manifest.get("labels") or [str(i) for i in range(manifest["num_classes"])]
    return [[(labels[i], float(p[i])) for i in np.argsort(-p)[:top]] for p in probabilities]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    args = parser.parse_args(argv)
    try:
        results = classify(args.manifest, args.images, args.precision)
    except (ConsumerError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, top5 in zip(args.images, results, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
