"""Self-describing artifacts: each ONNX file's metadata written into it (attnvgg_runtime.metadata
defines the keys, the contract a consumer reads), and the camera-frame graph, whose input is
uint8 NHWC frames with the preprocessing inside.

Metadata is written by rewriting the file's top-level protobuf fields, the graph copied as bytes
and never parsed (a full-size graph parsed and serialized whole takes 2.2 GB more memory)."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from attnvgg_export.graphs.onnx_file import _key, _varint, save_model_streamed
from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.metadata import (
    FRAME_INPUT_NAME,
    METADATA_PROPS_FIELD,
    describe,
    string_entry,
    top_level_fields,
)


def write_metadata(path: Path, props: dict[str, str]) -> Path:
    """``path`` rewritten (under a temporary name, then renamed) with ``props`` as model
    metadata_props, replacing entries of the same keys and keeping every other field's bytes."""
    path = Path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data, \
            atomic_path(path) as tmp, open(tmp, "wb") as out:
        view = memoryview(data)
        try:
            for field, start, payload, end in top_level_fields(data):
                if field == METADATA_PROPS_FIELD and string_entry(data, payload, end)[0] in props:
                    continue
                out.write(view[start:end])
            for key, value in props.items():
                out.write(_field(onnx.StringStringEntryProto(key=key, value=value).SerializeToString()))
        finally:
            view.release()
    return path


def describe_onnx(path: Path, manifest, frame: dict | None = None) -> Path:
    """The metadata of an artifact of ``manifest`` (a frame artifact: ``frame``, its input)
    written into the ONNX file ``path``."""
    return write_metadata(path, describe(manifest, frame))


def _field(payload: bytes) -> bytes:
    return _key(METADATA_PROPS_FIELD) + _varint(len(payload)) + payload


def onnx_with_frame_input(source: Path, target: Path, preprocessing: dict,
                          channel_order: str = "RGB") -> Path:
    """``source`` with a uint8 NHWC input named ``frame`` in front of it: Cast to float, / 255,
    - mean, / std (per channel), Transpose to NCHW, in the order attnvgg_runtime.metadata.from_frames
    computes them (so that the two agree to the bit on elementwise-exact kernels). ``channel_order``
    "BGR": the frame's channels are reversed first (OpenCV's order)."""
    model = onnx.load(str(source))
    graph = model.graph
    old = graph.input[0]
    dims = old.type.tensor_type.shape.dim
    batch, height, width = (d.dim_param or d.dim_value for d in (dims[0], dims[2], dims[3]))
    frame = helper.make_tensor_value_info(FRAME_INPUT_NAME, TensorProto.UINT8, [batch, height, width, 3])
    constants = [
        numpy_helper.from_array(np.float32(255).reshape(()), "frame.scale"),
        numpy_helper.from_array(np.asarray(preprocessing["mean"], np.float32), "frame.mean"),
        numpy_helper.from_array(np.asarray(preprocessing["std"], np.float32), "frame.std"),
    ]
    nodes, current = [], FRAME_INPUT_NAME
    if channel_order == "BGR":
        constants.append(numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), "frame.bgr_to_rgb"))
        nodes.append(helper.make_node("Gather", [current, "frame.bgr_to_rgb"], ["frame.rgb"], axis=3,
                                      name="frame/bgr_to_rgb"))
        current = "frame.rgb"
    nodes += [
        helper.make_node("Cast", [current], ["frame.float"], to=TensorProto.FLOAT, name="frame/cast"),
        helper.make_node("Div", ["frame.float", "frame.scale"], ["frame.unit"], name="frame/scale"),
        helper.make_node("Sub", ["frame.unit", "frame.mean"], ["frame.centered"], name="frame/mean"),
        helper.make_node("Div", ["frame.centered", "frame.std"], ["frame.normalized"], name="frame/std"),
        helper.make_node("Transpose", ["frame.normalized"], [old.name], perm=[0, 3, 1, 2],
                         name="frame/to_nchw"),
    ]
    graph.input.remove(old)
    graph.input.insert(0, frame)
    graph.initializer.extend(constants)
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    return save_model_streamed(model, Path(target))
