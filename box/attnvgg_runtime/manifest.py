"""manifest.json: what a runtime needs to load and feed the artifacts, with their sha256."""

from __future__ import annotations

import importlib.resources
import json
import platform
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path, PurePosixPath, PureWindowsPath

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.files import sha256_file, write_text_atomic

# 1.1 added data_split, openvino-ir, bf16 and openvino-cpu; 1.2 exact_int8_session_options;
# 1.5 `activations` of the int8 graphs (what a box needs to know without onnx); 1.6
# `parity.gate.warnings` (passed, not proven), golden cases' `labels`, failures as records, the
# recommendation's `reader`; 1.7 `data_split.skipped` (the source's unreadable files, path and
# reason), and every path is read confined to the build folder; 1.8 every artifact carries its
# metadata (attnvgg_runtime.metadata: labels, preprocessing, input), and frame artifacts (uint8
# NHWC input, `input` on the entry). Reads 1.0 and on (1.x); refuses another major version,
# saying how to rebuild.
SCHEMA_VERSION = "1.8"
FORMATS = ("onnx", "ort", "plan", "openvino-ir")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TARGETS = ("any", "tensorrt", "onnxruntime-cpu", "openvino-cpu")
INT8_MIN_SIDE = 64  # int8 artifacts are gated, and so declared servable, where H, W >= this
_VERSIONED = ("torch", "torchvision", "onnx", "onnxscript", "onnxsim", "onnxruntime-gpu",
              "onnxruntime", "numpy", "tensorrt")


class ManifestError(ToolchainError):
    """The manifest or an artifact it lists is missing, malformed or was changed."""


class OutsideBuild(ManifestError):
    """A path the manifest names that leads out of its build folder (absolute, ``..``, or a
    symlink out): a box reads nothing but its build folder."""


def relative_path(path: str, where: str) -> str:
    """``path`` as the manifest must write it: relative, forward slashes, never climbing out
    (no ``..``). Refused otherwise, naming it: the manifest is the box's root of trust, and a
    path out of the build folder would have it open and hash any file on the box."""
    pure = PurePosixPath(path) if isinstance(path, str) else None
    if (pure is None or not path or pure.is_absolute() or PureWindowsPath(path).is_absolute()
            or PureWindowsPath(path).drive or "\\" in path or ".." in pure.parts or "\0" in path):
        raise OutsideBuild(f"{where}: path {path!r} is not a plain path inside the build folder "
                           f"(absolute, '..', or not a string); a manifest names its files relative "
                           f"to itself: rebuild with `make engine`, or copy the build folder whole")
    return path


def inside_build(root: str | Path, path: str, where: str = "manifest") -> Path:
    """The file ``path`` (as the manifest lists it) in the build folder ``root``, symlinks
    followed: refused where it leads out of the folder (OutsideBuild, naming it)."""
    root = Path(root).resolve()
    resolved = (root / relative_path(path, where)).resolve()
    if not resolved.is_relative_to(root):
        raise OutsideBuild(f"{where}: {path} resolves to {resolved}, outside the build folder {root} "
                           f"(a symlink out); copy the files themselves into the build folder")
    return resolved


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class ArtifactFile:
    """A file beside an artifact that it cannot run without (an OpenVINO IR's .bin)."""
    path: str
    bytes: int
    sha256: str


@dataclass
class Artifact:
    """One artifact of a build, as the manifest lists it (docs/manifest.md, field by field)."""
    path: str  # relative to the manifest
    format: str  # FORMATS
    precision: str  # PRECISIONS
    target: str  # TARGETS
    bytes: int
    sha256: str
    weights: ArtifactFile | None = None
    runtime_options: dict = field(default_factory=dict)
    exact_int8_session_options: dict | None = None
    source: str | None = None  # the graph a converted artifact was made from (schema 1.4)
    min_side: int | None = None  # int8: the smallest H, W its verdict covers (schema 1.4)
    activations: str | None = None  # int8 ONNX graphs: "int8" or "uint8" (schema 1.5)
    input: dict | None = None  # a frame artifact's input: uint8 NHWC (schema 1.8; None: the manifest's)

    def check_paths(self, where: str) -> None:
        """Every path of the entry stays in the build folder, and an IR's weights are the ``.bin``
        beside its ``.xml`` by name: the file OpenVINO loads is the file whose sha256 is checked."""
        for path in (self.path, self.source, self.weights and self.weights.path):
            if path is not None:
                relative_path(path, f"{where}: artifact {self.path}")
        if self.format == "openvino-ir":
            expected = PurePosixPath(self.path).with_suffix(".bin").as_posix()
            if self.weights is None or self.weights.path != expected:
                raise ManifestError(
                    f"{where}: artifact {self.path} lists its weights as "
                    f"{self.weights and self.weights.path!r}, but OpenVINO loads {expected} beside "
                    f"the .xml; the manifest was edited: rebuild with `make engine`")

    def files(self) -> list[ArtifactFile]:
        """The bytes it is: itself, and its weights file where it has one."""
        return [ArtifactFile(self.path, self.bytes, self.sha256), *([self.weights] if self.weights else [])]

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["weights"] = self.weights and dict(self.weights.__dict__)
        return {k: v for k, v in data.items() if v is not None and v != {}}

    @classmethod
    def from_json(cls, data: dict) -> Artifact:
        known = {f.name for f in fields(cls)}
        weights = data.get("weights")
        return cls(**{k: v for k, v in data.items() if k in known and k != "weights"},
                   weights=ArtifactFile(**weights) if weights else None)


OPTIONAL = ("labels", "data_split", "calibration", "backend", "tensorrt", "golden", "report")


@dataclass
class Manifest:
    """What a runtime needs to load and feed a build's artifacts: the one reader's and writer's
    record (read_manifest, write_manifest). The top level and the artifacts are typed; the stage
    records below them (parity, calibration, golden, ...) are the JSON objects docs/manifest.md
    describes."""
    variant: str
    num_classes: int
    weights: str  # how the weights were made: a checkpoint, or the seeded initialization
    model: dict
    input: dict
    output: dict
    dynamic: dict  # per axis: min, opt, max (and multiple_of)
    preprocessing: dict
    artifacts: list[Artifact]
    export: dict
    parity: dict
    bench: dict | None
    versions: dict
    schema_version: str = SCHEMA_VERSION
    labels: list[str] | None = None
    data_split: dict | None = None
    calibration: dict | None = None
    backend: dict | None = None
    tensorrt: dict | None = None
    golden: dict | None = None
    report: str | None = None

    def artifact(self, path: str) -> Artifact:
        """The entry for ``path`` (a converted artifact's ``source``, say)."""
        found = next((a for a in self.artifacts if a.path == path), None)
        if found is None:
            raise ManifestError(f"the manifest lists no artifact {path}; it lists "
                                f"{', '.join(a.path for a in self.artifacts)}")
        return found

    @property
    def trained(self) -> bool:
        return bool(self.model.get("checkpoint"))

    def to_json(self) -> dict:
        data = {"schema_version": self.schema_version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "schema_version" or (f.name in OPTIONAL and value is None):
                continue
            data[f.name] = [a.to_json() for a in value] if f.name == "artifacts" else value
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "manifest") -> Manifest:
        """A manifest of schema 1.x (an older one is read: what it lacks is None or empty); another
        major version is refused with how to rebuild."""
        version = str(data.get("schema_version", ""))
        if not version.startswith("1."):
            raise ManifestError(f"{where}: schema_version {version!r} is not 1.x; this reader reads "
                                f"manifest schema 1 (up to {SCHEMA_VERSION}): rebuild it with this "
                                f"toolchain (`make engine`), or read it with the release that wrote it")
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in OPTIONAL
                   and f.name not in ("schema_version", "bench")]
        if missing:
            raise ManifestError(f"{where} lacks {', '.join(missing)}: it is not a manifest this "
                                f"toolchain wrote; rebuild it with `make engine`")
        values = {k: v for k, v in data.items() if k in known}
        values["artifacts"] = [Artifact.from_json(a) for a in data["artifacts"]]
        for artifact in values["artifacts"]:
            artifact.check_paths(where)
        for key in ("inputs", "outputs"):
            if isinstance(values.get("golden"), dict) and key in values["golden"]:
                relative_path(values["golden"][key].get("path"), f"{where}: golden {key}")
        values.setdefault("bench", None)
        return cls(**values)


def artifact_entry(path: Path, root: Path, format: str, precision: str, target: str,
                   runtime_options: dict | None = None,
                   exact_int8_options: dict | None = None, source: Path | None = None,
                   activations: str | None = None, frame: dict | None = None) -> Artifact:
    """One artifact. An OpenVINO IR's weights file (.bin beside the .xml) is listed with its own
    sha256 under `weights`; `runtime_options` are what a runtime must set to run it as listed
    (the bf16 entry of the fp32 IR); `exact_int8_session_options`, what ONNX Runtime must set to
    read an int8 graph with 8-bit weights exactly where the CPU's int8 pair sums saturate
    (attnvgg_runtime.readers.cpu; the TensorRT graph), as the gate and the consumer do; `source`, the
    graph a converted artifact (.ort, IR, plan) was made from, which the gate compares it with;
    `activations`, an int8 graph's activation type ("int8" or "uint8"), which decides whether a
    CPU without VNNI can read it (attnvgg_runtime.verify.readers.signed_int8_activations);
    `frame`, a frame artifact's input (attnvgg_runtime.metadata.frame_input), its ``source`` the
    artifact it wraps."""
    assert format in FORMATS and precision in PRECISIONS and target in TARGETS
    weights = path.with_suffix(".bin") if format == "openvino-ir" else None
    return Artifact(
        path.relative_to(root).as_posix(), format, precision, target, path.stat().st_size,
        sha256_file(path),
        weights=weights and ArtifactFile(weights.relative_to(root).as_posix(), weights.stat().st_size,
                                         sha256_file(weights)),
        runtime_options=dict(runtime_options or {}),
        exact_int8_session_options=dict(exact_int8_options) if exact_int8_options else None,
        source=source.relative_to(root).as_posix() if source is not None else None,
        activations=activations, input=frame)


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


def declare_served_ranges(manifest: Manifest) -> None:
    """Every int8 artifact gets `min_side` where it is above the declared minimum."""
    for artifact in manifest.artifacts:
        served = served_range(manifest.dynamic, artifact.precision)
        if served != manifest.dynamic:
            artifact.min_side = min(served["height"]["min"], served["width"]["min"])


def read_manifest_json(path: str | Path) -> dict:
    """The manifest's JSON as written (what a runtime in another language reads)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist; build it with `make onnx VARIANT=...`") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); rebuild it") from None


def read_manifest(path: str | Path) -> Manifest:
    """The one reader: the manifest at ``path``, typed."""
    return Manifest.from_json(read_manifest_json(path), str(path))


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


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """The one writer. Validated against the schema before anything is written: a runtime never
    sees a manifest that breaks the contract."""
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n"
    validate_manifest(json.loads(text), str(path))  # what a runtime reads: tuples become lists
    return write_text_atomic(path, text)


def verify_artifacts(manifest_path: str | Path) -> list[Path]:
    """Every listed artifact exists and still has the sha256 the manifest records."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    paths = []
    checked: set[str] = set()
    for entry in read_manifest(manifest_path).artifacts:
        for item in entry.files():
            if item.path in checked:
                continue
            path = inside_build(root, item.path, str(manifest_path))
            if not path.is_file():
                raise ManifestError(f"artifact {path} listed in {manifest_path} is missing; rebuild")
            if sha256_file(path) != item.sha256:
                raise ManifestError(f"artifact {path} no longer matches the sha256 in "
                                    f"{manifest_path}: it was changed after the build; rebuild it")
            checked.add(item.path)
            paths.append(path)
    return paths
