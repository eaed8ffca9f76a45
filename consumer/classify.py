#!/usr/bin/env python3
"""Reference consumer of an attnvgg-export build: what an edge integrator copies.

Needs only numpy, Pillow and onnxruntime, or openvino (no torch, nothing else from this project;
--verify also uses its torch-free exporter package, see below).
Reads manifest.json, picks the artifact for a runtime and precision (by default the one the
build's benchmark recommends for the runtime installed), refuses it unless the build's gate
passed it under that runtime for these very bytes (its sha256; `--allow-unverified` runs it
anyway, saying so on stderr), verifies its sha256, applies the recorded preprocessing to image
files, runs, and prints the top-5 classes with their labels.

    python classify.py build/se/manifest.json photo1.jpg photo2.png [--precision int8]
    python classify.py build/se/manifest.json photo.jpg --runtime openvino
    python classify.py build/se/manifest.json photo.jpg --allow-unverified   # no gate verdict
    python classify.py build/se/manifest.json --bench      # time every CPU artifact on this box
    python classify.py build/se/manifest.json --verify     # re-run the gate's measures here

--verify needs, besides numpy and the runtimes, this project's torch-free `exporter` package
(run from a checkout, or `pip install --no-deps` it): the gate's own measures and budgets, so
that the box judges exactly as the build did (docs/edge.md).
"""

from __future__ import annotations

import argparse
import base64
import functools
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


RUNTIMES = {"onnxruntime": ("onnxruntime-cpu", ("ort", "onnx")),
            "openvino": ("openvino-cpu", ("openvino-ir",))}


def default_runtime(manifest: dict) -> str:
    """openvino where it is installed and the build has OpenVINO IR (Intel edge boxes), else
    onnxruntime."""
    import importlib.util

    has_ir = any(a["format"] == "openvino-ir" for a in manifest["artifacts"])
    return "openvino" if has_ir and importlib.util.find_spec("openvino") else "onnxruntime"


def pick_artifact(manifest: dict, precision: str | None = None,
                  runtime: str = "onnxruntime") -> dict:
    """The artifact to run: of ``precision`` if given (ORT format before ONNX), else the one the
    build's benchmark recommends for ``runtime`` at batch 1, else fp32."""
    target, formats = RUNTIMES[runtime]
    if precision is None:
        recommended = (manifest.get("bench") or {}).get("recommended", {}).get("1", {}).get(target)
        if recommended:
            return next(a for a in manifest["artifacts"] if a["path"] == recommended["artifact"]
                        and a["precision"] == recommended["precision"])
        precision = "fp32"
    candidates = [a for a in manifest["artifacts"] if a["precision"] == precision
                  and a["target"] in (target, "any") and a["format"] in formats]
    if not candidates:
        available = sorted({(a["precision"], a["target"]) for a in manifest["artifacts"]})
        raise ConsumerError(f"no {precision} artifact for {target}; the build has {available}")
    return sorted(candidates, key=lambda a: a["format"] != "ort")[0]


# A 195-byte ONNX graph (exporter.runtime.cpu.saturation_probe_model; a test holds the two equal): u8 255s
# times s8 127s, 64 deep, whose exact sum is 2,072,640. On x86 without VNNI or AMX, ONNX Runtime's
# int8 kernels sum product pairs in saturating int16 and return 1,048,544 instead.
INT8_PROBE = base64.b64decode(
    "CAgSDmF0dG52Z2ctZXhwb3J0OqgBChgKAWEKAWISAWMiDU1hdE11bEludGVnZXISFWludDhfc2F0dXJhdGlvbl9wcm9i"
    "ZSpLCEAIARADQgFiSkB/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/WhMKAWESDgoMCAISCAoCCAEKAghAYhMKAWMSDgoMCAYSCAoCCAEKAggBQgQKABAN")
INT8_PROBE_EXACT = 255 * 127 * 64


@functools.cache
def int8_products_saturate() -> bool:
    """Whether ONNX Runtime's int8 kernels saturate on this CPU, by running the probe."""
    import onnxruntime as ort

    session = ort.InferenceSession(INT8_PROBE, providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.full((1, 64), 255, np.uint8)})[0].min()) != INT8_PROBE_EXACT


def onnxruntime_session_options(artifact: dict):
    """Session options for the artifact: where this CPU's int8 products saturate, the entries
    the manifest records for exact int8 (the build's gate measured the artifact so)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    exact = artifact.get("exact_int8_session_options", {})
    for key, value in (exact if exact and int8_products_saturate() else {}).items():
        options.add_session_config_entry(key, value)
    return options


def reader_name(artifact: dict, runtime: str) -> str:
    """The gate's name for ``runtime`` reading ``artifact`` (the bf16 entry is "openvino-bf16")."""
    bf16 = artifact.get("runtime_options", {}).get("INFERENCE_PRECISION_HINT") == "bf16"
    return "openvino-bf16" if runtime == "openvino" and bf16 else runtime


def unverified_reason(manifest: dict, artifact: dict, runtime: str) -> str | None:
    """Why the build's gate did not pass ``artifact`` under ``runtime`` for its current bytes, or
    None where it did (manifest schema 1.3: parity.gate.verdicts)."""
    reader = reader_name(artifact, runtime)
    gate = (manifest.get("parity") or {}).get("gate")
    if not gate or "verdicts" not in gate:
        return "the build's gate has not run on these artifacts (`make parity`)"
    mine = [v for v in gate["verdicts"] if v["path"] == artifact["path"] and v["reader"] == reader]
    if not mine:
        return f"the gate has no verdict for it under {reader}"
    current = [v for v in mine if v["sha256"] == artifact["sha256"]]
    if not current:
        return "the gate judged other bytes than the manifest lists now"
    if any(v["passed"] and not v.get("skipped") for v in current):
        return None
    skipped = next((v["skipped"] for v in current if v.get("skipped")), None)
    return f"the gate did not verify it ({skipped})" if skipped else "it FAILED the gate"


def check_verdict(manifest: dict, artifact: dict, runtime: str, allow_unverified: bool) -> None:
    reason = unverified_reason(manifest, artifact, runtime)
    if reason is None:
        return
    what = (f"{artifact['path']} under {runtime} has no passing gate verdict for its bytes "
            f"(sha256 {artifact['sha256'][:12]}...): {reason}")
    if not allow_unverified:
        raise ConsumerError(f"refusing to run it: {what}. Run `make parity` on the build, or pass "
                            f"--allow-unverified to run it without that proof")
    print(f"WARNING: --allow-unverified: running {what}. Its outputs are NOT verified against "
          f"the trained model.", file=sys.stderr)


def load_runner(manifest_path: Path, artifact: dict, runtime: str):
    """A callable batch -> logits for the artifact, sha256 checked (an IR's weights too)."""
    path = verified_path(manifest_path, artifact)
    if runtime == "openvino":
        import openvino as ov

        verified_path(manifest_path, artifact["weights"])
        options = {"INFERENCE_PRECISION_HINT": "f32", **artifact.get("runtime_options", {})}
        compiled = ov.Core().compile_model(str(path), "CPU", options)
        return lambda batch: compiled(batch)[0]
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), onnxruntime_session_options(artifact),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


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


def classify(manifest_path: Path, images: list[Path], precision: str | None = "fp32",
             top: int = 5, runtime: str = "onnxruntime",
             allow_unverified: bool = False) -> list[list[tuple[str, float]]]:
    manifest = load_manifest(manifest_path)
    artifact = pick_artifact(manifest, precision, runtime)
    check_verdict(manifest, artifact, runtime, allow_unverified)
    run = load_runner(manifest_path, artifact, runtime)
    batch = np.stack([preprocess(p, manifest["preprocessing"]) for p in images])
    if min(batch.shape[2:]) < artifact.get("min_side", 0):  # outside what its verdict covers
        raise ConsumerError(f"{artifact['path']} is verified only for H and W >= "
                            f"{artifact['min_side']} (min_side); the preprocessing crops to "
                            f"{batch.shape[2]}x{batch.shape[3]}: use --precision fp32 or fp16")
    logits = run(batch)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    labels = manifest.get("labels") or [str(i) for i in range(manifest["num_classes"])]
    return [[(labels[i], float(p[i])) for i in np.argsort(-p)[:top]] for p in probabilities]


def bench(manifest_path: Path, batches: tuple[int, ...] = (1, 8), runs: int = 10) -> list[dict]:
    """p50 latency of every CPU artifact under every runtime installed here, at the opt size:
    the re-measurement on the target box, without torch."""
    import importlib.util
    import time

    manifest = load_manifest(manifest_path)
    dyn = manifest["dynamic"]
    rows = []
    for runtime, (target, formats) in RUNTIMES.items():
        if not importlib.util.find_spec(runtime):
            continue
        for artifact in manifest["artifacts"]:
            if artifact["format"] not in formats or artifact["target"] not in (target, "any"):
                continue
            run = load_runner(manifest_path, artifact, runtime)
            for size in batches:
                x = np.random.default_rng(0).standard_normal(
                    (size, 3, dyn["height"]["opt"], dyn["width"]["opt"])).astype(np.float32)
                run(x)
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - start)
                rows.append({"runtime": runtime, "artifact": artifact["path"],
                             "precision": artifact["precision"], "batch": size,
                             "p50_ms": 1000 * float(np.median(times))})
    return rows


def verify(manifest_path: Path) -> int:
    """The build's golden I/O through every artifact the runtimes here can read, judged by the
    gate's measures and budgets (exporter.verify.on_box): exit 1 on a breach, 0 if all passed."""
    try:
        from exporter.verify.on_box import main as verify_main
    except ImportError:  # a checkout: consumer/ beside exporter/
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from exporter.verify.on_box import main as verify_main
    return verify_main([str(manifest_path)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("images", type=Path, nargs="*")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default=None,
                        help="default: what the build's benchmark recommends, else fp32")
    parser.add_argument("--runtime", choices=list(RUNTIMES), default=None,
                        help="default: openvino where installed and the build has IR, else "
                        "onnxruntime")
    parser.add_argument("--bench", action="store_true", help="time every CPU artifact here")
    parser.add_argument("--verify", action="store_true",
                        help="re-run the gate's measures on this box's kernels (exit 1 on a breach)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="run an artifact the build's gate did not pass for its bytes (says so "
                        "on stderr); by default it is refused")
    args = parser.parse_args(argv)
    if args.verify:
        return verify(args.manifest)
    try:
        if args.bench:
            rows = bench(args.manifest)
            for r in sorted(rows, key=lambda r: (r["batch"], r["p50_ms"])):
                print(f"batch {r['batch']}: {r['p50_ms']:8.1f} ms  {r['runtime']} {r['artifact']} "
                      f"({r['precision']})")
            return 0
        if not args.images:
            parser.error("give image files, or --bench")
        runtime = args.runtime or default_runtime(load_manifest(args.manifest))
        results = classify(args.manifest, args.images, args.precision, runtime=runtime,
                           allow_unverified=args.allow_unverified)
    except (ConsumerError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, top5 in zip(args.images, results, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
