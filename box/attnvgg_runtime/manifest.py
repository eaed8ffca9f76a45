"""manifest.json: what a runtime needs to load and feed the artifacts, with their sha256."""

from __future__ import annotations

import importlib.resources
import json
import platform
from importlib import metadata
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.files import sha256_file, write_text_atomic

# 1.1 added data_split, openvino-ir, bf16 and openvino-cpu; 1.2 exact_int8_session_options;
# 1.5 `activations` of the int8 graphs (what a box needs to know without onnx); 1.6
# `parity.gate.warnings` (passed, not proven). Reads 1.0 and on.
SCHEMA_VERSION = "1.6"
FORMATS = ("onnx", "ort", "plan", "openvino-ir")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TARGETS = ("any", "tensorrt", "onnxruntime-cpu", "openvino-cpu")
INT8_MIN_SIDE = 64  # int8 artifacts are gated, and so declared servable, where H, W >= this
_VERSIONED = ("torch", "torchvision", "onnx", "onnxscript", "onnxsim", "onnxruntime-gpu",
              "onnxruntime", "numpy", "tensorrt")


class ManifestError(ToolchainError):
    """The manifest or an artifact it lists is missing, malformed or was changed."""


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def artifact_entry(path: Path, root: Path, format: str, precision: str, target: str,
                   runtime_options: dict | None = None,
                   exact_int8_options: dict | None = None, source: Path | None = None,
                   activations: str | None = None) -> dict:
    """One artifact. An OpenVINO IR's weights file (.bin beside the .xml) is listed with its own
    sha256 under `weights`; `runtime_options` are what a runtime must set to run it as listed
    (the bf16 entry of the fp32 IR); `exact_int8_session_options`, what ONNX Runtime must set to
    read an int8 graph with 8-bit weights exactly where the CPU's int8 pair sums saturate
    (attnvgg_runtime.readers.cpu; the TensorRT graph), as the gate and the consumer do; `source`, the
    graph a converted artifact (.ort, IR, plan) was made from, which the gate compares it with;
    `activations`, an int8 graph's activation type ("int8" or "uint8"), which decides whether a
    CPU without VNNI can read it (attnvgg_runtime.verify.readers.signed_int8_activations)."""
    assert format in FORMATS and precision in PRECISIONS and target in TARGETS
    entry = {"path": path.relative_to(root).as_posix(), "format": format, "precision": precision,
             "target": target, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if format == "openvino-ir":
        weights = path.with_suffix(".bin")
        entry["weights"] = {"path": weights.relative_to(root).as_posix(),
                            "bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    if runtime_options:
        entry["runtime_options"] = dict(runtime_options)
    if exact_int8_options:
        entry["exact_int8_session_options"] = dict(exact_int8_options)
    if source is not None:
        entry["source"] = source.relative_to(root).as_posix()
    if activations is not None:
        entry["activations"] = activations
    return entry


def int8_min_side(dynamic: dict) -> int:
    """The smallest H and W an int8 artifact is gated at, and so served at: INT8_MIN_SIDE (or the
    opt size, where smaller), rounded up to the declared multiple. Below it int8 is measured and
    reported only (attnvgg_export/verify/cases.py says why)."""
    side = min(INT8_MIN_SIDE, dynamic["height"]["opt"], dynamic["width"]["opt"])
    multiple = max(dynamic["height"].get("multiple_of", 1), dynamic["width"].get("multiple_of", 1))
    return -(-side // multiple) * multiple


def served_range(dynamic: dict, precision: str) -> dict:
    """The manifest's declared range as an artifact of ``precision`` serves it: int8's H and W
    start at int8_min_side (the range its verdict covers; its `min_side`, TensorRT's profile and
    Triton's config all come from here)."""
    side = int8_min_side(dynamic) if precision == "int8" else 0
    return {axis: (r | {"min": max(r["min"], side)} if axis in ("height", "width") else r)
            for axis, r in dynamic.items()}


def declare_served_ranges(manifest: dict) -> None:
    """Every int8 artifact gets `min_side` where it is above the declared minimum."""
    for artifact in manifest["artifacts"]:
        served = served_range(manifest["dynamic"], artifact["precision"])
        if served != manifest["dynamic"]:
            artifact["min_side"] = min(served["height"]["min"], served["width"]["min"])


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist; build it with `make onnx VARIANT=...`") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); rebuild it") from None


def manifest_schema() -> dict:
    return json.loads((importlib.resources.files("attnvgg_runtime") / "schema.json").read_text())


def validate_manifest(manifest: dict, where: str = "manifest") -> None:
    """The manifest against the published JSON Schema (box/attnvgg_runtime/schema.json)."""
    import jsonschema

    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as e:
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ManifestError(f"{where} does not match manifest schema {SCHEMA_VERSION} at "
                            f"{field}: {e.message}") from None


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Validated against the schema before anything is written: a runtime never sees a manifest
    that breaks the contract."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    validate_manifest(json.loads(text), str(path))  # what a runtime reads: tuples become lists
    return write_text_atomic(path, text)


def verify_artifacts(manifest_path: str | Path) -> list[Path]:
    """Every listed artifact exists and still has the sha256 the manifest records."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    paths = []
    checked: set[str] = set()
    for entry in read_manifest(manifest_path)["artifacts"]:
        for item in (entry, entry.get("weights")):
            if item is None or item["path"] in checked:
                continue
            path = root / item["path"]
            if not path.is_file():
                raise ManifestError(f"artifact {path} listed in {manifest_path} is missing; rebuild")
            if sha256_file(path) != item["sha256"]:
                raise ManifestError(f"artifact {path} no longer matches the sha256 in "
                                    f"{manifest_path}: it was changed after the build; rebuild it")
            checked.add(item["path"])
            paths.append(path)
    return paths
