"""What every artifact says about itself, so that an application given the file alone (ONNX
Runtime's C API, OpenVINO's C++ API, Triton) can feed it and name its outputs: the class names,
the preprocessing, the input it takes, the variant, the toolchain and the model it was built
from. ONNX and .ort files carry them as model ``metadata_props`` under the keys of ``KEYS``; an
OpenVINO IR in its ``rt_info`` under ``attnvgg`` (``<rt_info><attnvgg><classes value=.../>``),
the key without its ``attnvgg.`` prefix. Every value is a string; JSON where it is a structure.
The contract is versioned by ``attnvgg.schema`` (docs/edge.md, "What each file says").

The stages that write a file write its metadata before its sha256 is taken, so it is covered by
the manifest's hash; the box compares it with the manifest and refuses a file that disagrees.

And the camera-frame input: a frame artifact takes uint8 NHWC images (RGB, or BGR where it says
so) and does the cast, scaling, normalization and transpose inside the graph. ``to_frames`` and
``from_frames`` are the same arithmetic outside it: how the gate feeds a frame artifact its cases
(float images made from 8-bit ones round-trip exactly) and how the artifact it wraps is fed the
same frames."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ElementTree
from importlib import metadata as package_metadata

import numpy as np

from attnvgg_runtime.errors import ToolchainError

SCHEMA = "1"
PREFIX = "attnvgg."
# every key an artifact of this contract carries (docs/edge.md lists them)
KEYS = ("schema", "variant", "classes", "input", "preprocessing", "model_id", "toolchain")
IR_SECTION = "attnvgg"
FRAME_INPUT_NAME = "frame"


class MetadataMismatch(ToolchainError):
    """An artifact's own metadata and its manifest disagree, or the file carries none."""


def frame_input(channel_order: str = "RGB") -> dict:
    """The manifest's and the metadata's `input` of a frame artifact."""
    return {"name": FRAME_INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "channel_order": channel_order,
            "shape": ["batch", "height", "width", 3]}


def model_id(manifest) -> str:
    """The model an artifact was built from, as 16 hex digits: the sha256 of what the export was
    given (variant, classes, width, seed, the checkpoint's sha256, labels, sizes, preprocessing).
    Not the manifest's sha256: the manifest lists each artifact's sha256, so an artifact cannot
    carry the manifest's; nor a random id, which would make two exports of one model differ."""
    model = manifest.model
    identity = {"variant": manifest.variant, "num_classes": manifest.num_classes,
                "model_width": model.get("model_width"), "seed": model.get("seed"),
                "checkpoint_sha256": model.get("checkpoint_sha256"),
                "reset_head": model.get("reset_head"), "labels": manifest.labels,
                "dynamic": manifest.dynamic, "preprocessing": manifest.preprocessing}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def class_names(manifest) -> list[str]:
    return list(manifest.labels) if manifest.labels else [str(i) for i in range(manifest.num_classes)]


def describe(manifest, artifact_input: dict | None = None) -> dict[str, str]:
    """The metadata of an artifact of ``manifest`` whose input is ``artifact_input`` (a frame
    artifact's) or the manifest's float NCHW input: {key with its prefix: string value}."""
    pre = dict(manifest.preprocessing)
    pre["value_range"] = [0.0, 1.0]  # pixels / 255 before mean and std
    pre["in_graph"] = artifact_input is not None  # a frame artifact normalizes inside the graph
    the_input = dict(artifact_input or manifest.input)
    the_input.setdefault("layout", "NCHW")
    values = {"schema": SCHEMA, "variant": manifest.variant,
              "classes": json.dumps(class_names(manifest)),
              "input": json.dumps(the_input, sort_keys=True),
              "preprocessing": json.dumps(pre, sort_keys=True),
              "model_id": model_id(manifest), "toolchain": _toolchain_version()}
    return {PREFIX + k: values[k] for k in KEYS}


def _toolchain_version() -> str:
    try:
        return f"attnvgg-export {package_metadata.version('attnvgg-export')}"
    except package_metadata.PackageNotFoundError:
        return f"attnvgg-runtime {package_metadata.version('attnvgg-runtime')}"


# ---- reading a file's metadata (no onnx, no runtime needed) ----

METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props (onnx.proto)


def varint(data, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def top_level_fields(data, begin: int = 0, end: int | None = None) -> list[tuple[int, int, int, int]]:
    """The top-level fields of the protobuf message in ``data[begin:end]`` (bytes or an mmap) as
    (field number, start, payload start, end): the graph of a 550 MB ONNX file is one field,
    skipped by its length, never parsed or copied."""
    end = len(data) if end is None else end
    fields, position = [], begin
    while position < end:
        start = position
        tag, position = varint(data, position)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, position = varint(data, position)
            payload = position
        elif wire in (1, 5):
            payload = position
            position += 8 if wire == 1 else 4
        elif wire == 2:
            length, payload = varint(data, position)
            position = payload + length
        else:
            raise ValueError(f"not an ONNX model (protobuf wire type {wire} at byte {start})")
        if position > end:
            raise ValueError("not an ONNX model (a field runs past the end of the file)")
        fields.append((field, start, payload, position))
    return fields


def string_entry(data, begin: int, end: int) -> tuple[str, str]:
    """The (key, value) of the StringStringEntryProto in ``data[begin:end]``: fields 1 and 2."""
    found = {1: "", 2: ""}
    for field, _, payload, stop in top_level_fields(data, begin, end):
        found[field] = bytes(data[payload:stop]).decode("utf-8", "replace")
    return found[1], found[2]


def onnx_metadata(data) -> dict[str, str]:
    """An ONNX file's model metadata_props, from its bytes (or an mmap of them)."""
    try:
        return dict(string_entry(data, payload, end) for field, _, payload, end in top_level_fields(data)
                    if field == METADATA_PROPS_FIELD)
    except (ValueError, IndexError) as e:
        raise MetadataMismatch(f"cannot read the file's metadata: {e or 'truncated'}") from None


def ir_metadata(xml: bytes) -> dict[str, str]:
    """An OpenVINO IR's ``rt_info/attnvgg`` entries, keyed as in ONNX (with the prefix)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise MetadataMismatch(f"cannot read the IR's metadata: {e}") from None
    section = root.find(f"rt_info/{IR_SECTION}")
    if section is None:
        return {}
    return {PREFIX + child.tag: child.get("value", "") for child in section}


def set_ir_metadata(model, props: dict[str, str]) -> None:
    """``props`` (describe's) into an OpenVINO model's rt_info, as an IR carries them."""
    for key, value in props.items():
        model.set_rt_info(value, [IR_SECTION, key.removeprefix(PREFIX)])


def ours(found: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in found.items() if k.startswith(PREFIX) and k[len(PREFIX):] in KEYS}


def check_metadata(found: dict[str, str], manifest, artifact, where: str) -> None:
    """Refuse an artifact whose metadata is not what the manifest says it must be (a file from
    another build, or an older one, under this manifest's name and sha256). A manifest of schema
    1.8 on promises the metadata; older builds carry none and are not held to it."""
    if tuple(int(p) for p in manifest.schema_version.split(".")[:2]) < (1, 8):
        return
    expected = describe(manifest, artifact.input)
    found = ours(found)
    if not found:
        raise MetadataMismatch(f"{where}: {artifact.path} carries no attnvgg metadata, but its manifest "
                               f"(schema {manifest.schema_version}) says every artifact does: the file "
                               f"is not the one the build wrote; rebuild with `make engine`")
    differ = [k for k in expected if k != PREFIX + "toolchain" and found.get(k) != expected[k]]
    if differ:
        key = differ[0]
        raise MetadataMismatch(
            f"{where}: {artifact.path} says {key} = {found.get(key, '(missing)')[:120]!r}, its manifest "
            f"{expected[key][:120]!r} ({len(differ)} key(s) differ: {', '.join(differ)}): the file was "
            f"built for another model or input; rebuild with `make engine`")


def session_metadata(session) -> dict[str, str]:
    """ONNX Runtime's reading of a model's metadata_props (.onnx and .ort alike)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def read_keys(found: dict[str, str]) -> dict:
    """The metadata as values: classes, input and preprocessing parsed from JSON."""
    found = ours(found)
    missing = [PREFIX + k for k in KEYS if PREFIX + k not in found]
    if missing:
        raise MetadataMismatch(f"the file carries no {', '.join(missing)}: it was not written by "
                               f"attnvgg-export 0.1 with metadata (schema 1.8 on); give its manifest")
    values = {k[len(PREFIX):]: v for k, v in found.items()}
    for key in ("classes", "input", "preprocessing"):
        values[key] = json.loads(values[key])
    return values


# ---- the camera-frame input ----

CHANNEL_ORDERS = ("RGB", "BGR")


def _known_order(channel_order: str) -> str:
    if channel_order not in CHANNEL_ORDERS:
        raise MetadataMismatch(f"channel order {channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}: "
                               f"the manifest or file was edited; rebuild with `make engine`")
    return channel_order


def to_frames(images: np.ndarray, pre: dict, channel_order: str = "RGB") -> np.ndarray:
    """Float NCHW images normalized by ``pre`` (mean, std) back to the uint8 NHWC frames they
    were made from (rounded: exact for images made from 8-bit pixels)."""
    _known_order(channel_order)
    mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip(np.rint((images * std + mean) * 255), 0, 255).astype(np.uint8)
    frames = pixels.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(frames[..., ::-1] if channel_order == "BGR" else frames)


def from_frames(frames: np.ndarray, pre: dict, channel_order: str = "RGB") -> np.ndarray:
    """uint8 NHWC frames to the float NCHW input, in the order of operations the ONNX frame
    graph computes: float, / 255, - mean, / std, transpose (attnvgg_export.graphs.describe)."""
    _known_order(channel_order)
    if channel_order == "BGR":
        frames = frames[..., ::-1]
    x = frames.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class FrameInput:
    """A frame artifact's runner as the gate and the box feed every artifact: float NCHW batches
    in, each turned into the uint8 NHWC frames it came from (``to_frames``)."""

    def __init__(self, runner, pre: dict, channel_order: str = "RGB") -> None:
        self.runner, self.pre, self.channel_order = runner, pre, channel_order

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(to_frames(batch, self.pre, self.channel_order))


class NormalizedOutside:
    """The artifact a frame artifact wraps, fed the same frames normalized outside the graph
    (``from_frames``): what the frame artifact must compute but for preprocessing's rounding."""

    def __init__(self, runner, pre: dict, channel_order: str = "RGB") -> None:
        self.runner, self.pre, self.channel_order = runner, pre, channel_order

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        frames = to_frames(batch, self.pre, self.channel_order)
        return self.runner(from_frames(frames, self.pre, self.channel_order))


def metadata_of_file(path, format: str) -> dict[str, str] | None:
    """The metadata of the artifact file ``path``, read without loading its weights (an ONNX
    file's top-level fields, an IR's .xml); None for a plan, which carries none of ours. An
    .ort file's is ONNX Runtime's reading (a session: its flatbuffer has no other reader here)."""
    import mmap

    if format == "onnx":
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return onnx_metadata(data)
    if format == "openvino-ir":
        with open(path, "rb") as f:
            return ir_metadata(f.read())
    if format == "ort":
        from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner

        return session_metadata(OnnxRuntimeRunner(path, threads=1, memory_arena=False).session)
    return None


def with_frames(runner, artifact, manifest):
    """A frame artifact's runner fed as every other artifact is (float NCHW images, turned into
    the uint8 frames they came from); any other's as it is."""
    if artifact.input is None:
        return runner
    return FrameInput(runner, manifest.preprocessing, artifact.input.get("channel_order", "RGB"))
