"""An ONNX model written to one file a piece at a time: the bytes ``SerializeToString`` would
write, without holding them all at once. Serializing a full-size VGG16 (554 MB of weights) in one
piece takes 2.2 GB more memory for a moment, the peak of every stage that wrote a graph."""

from __future__ import annotations

from pathlib import Path

import onnx

from attnvgg_runtime.files import atomic_path

# field numbers (onnx.proto): ModelProto.graph, GraphProto.initializer
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5


def save_model_streamed(model: onnx.ModelProto, path: Path) -> Path:
    """``model`` to ``path`` (via a temporary name): protobuf writes a message's fields in
    field-number order, so the model is its fields before the graph, the graph's tag and length,
    the graph's fields before its initializers, each initializer, the graph's fields after them,
    then the model's fields after the graph; each piece is serialized alone."""
    graph = model.graph
    before_graph, after_graph = _split(model, MODEL_GRAPH, "graph")
    before_weights, after_weights = _split(graph, GRAPH_INITIALIZER, "initializer")
    weights_size = sum(_field_size(GRAPH_INITIALIZER, t.ByteSize()) for t in graph.initializer)
    graph_size = before_weights.ByteSize() + weights_size + after_weights.ByteSize()
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(before_graph.SerializeToString())
        out.write(_key(MODEL_GRAPH) + _varint(graph_size))
        out.write(before_weights.SerializeToString())
        for tensor in graph.initializer:
            out.write(_key(GRAPH_INITIALIZER) + _varint(tensor.ByteSize()))
            out.write(tensor.SerializeToString())
        out.write(after_weights.SerializeToString())
        out.write(after_graph.SerializeToString())
    return path


def _split(message, field_number: int, name: str):
    """Two copies of ``message`` without the field ``name``: one with the fields numbered below
    it, one with those above. The field itself is not copied."""
    before, after = type(message)(), type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == name:
            continue
        target = before if descriptor.number < field_number else after
        field = getattr(target, descriptor.name)
        if _repeated(descriptor):
            field.extend(value)
        elif descriptor.message_type is not None:
            field.CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)
    return before, after


def _repeated(descriptor) -> bool:
    is_repeated = getattr(descriptor, "is_repeated", None)  # protobuf >= 6; label() before it
    return is_repeated if is_repeated is not None else descriptor.label == descriptor.LABEL_REPEATED


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited


def _field_size(field_number: int, size: int) -> int:
    return len(_key(field_number)) + len(_varint(size)) + size


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
