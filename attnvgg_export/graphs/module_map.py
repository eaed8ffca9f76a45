"""The module map: which ONNX tensor each PyTorch module's output became, written into the
exported graph's metadata (under attnvgg_export.verify.explain.MODULE_OUTPUTS_KEY, which reads it) so
that `explain` and the layer fallback can compare an artifact with eager module by module."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from attnvgg_export.verify.explain import MODULE_OUTPUTS_KEY
from attnvgg_runtime.metadata import METADATA_PROPS_FIELD, string_entry, top_level_fields

if TYPE_CHECKING:
    from torch import nn

# The modules whose outputs `explain` compares with eager: every layer with weights, the pools,
# and the SE / attention blocks as a whole.
EXPLAINED_MODULES = ("Conv2d", "Linear", "MaxPool2d", "ExportableAdaptiveAvgPool2d", "SEBlock",
                     "LinearAttention", "SoftmaxAttention")


def module_outputs(proto: onnx.ModelProto, model: nn.Module) -> list[dict]:
    """[{module, kind, tensor}] in forward order: the ONNX tensor each module's output became,
    read from the exporter's per-node name scopes (the last node inside the module's scope)."""
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    last: dict[str, str] = {}
    for node in proto.graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props  # a Python list repr
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        for scope in scopes or []:
            if kinds.get(scope) in EXPLAINED_MODULES and node.output:
                last.pop(scope, None)  # re-insert: dict order follows the module's last node
                last[scope] = node.output[0]
    return [{"module": m, "kind": kinds[m], "tensor": t} for m, t in last.items()]


def strip_trace_metadata(proto: onnx.ModelProto, modules: list[dict]) -> None:
    """Drop the exporter's per-node metadata: its stack traces hold absolute source paths, so the
    same model exported from two checkouts would give different bytes. What `explain` needs of it
    (which tensor is which module's output) is kept once, in the model's metadata."""
    for node in proto.graph.node:
        del node.metadata_props[:]
    proto.graph.doc_string = ""
    onnx.helper.set_model_props(proto, {MODULE_OUTPUTS_KEY: json.dumps(modules)})


def keep_only_module_map(proto: onnx.ModelProto) -> None:
    """Model metadata written by tools (onnxsim, ORT quantization) is bookkeeping that would make
    the bytes depend on the tool run; the module map is ours and stays."""
    kept = [p for p in proto.metadata_props if p.key == MODULE_OUTPUTS_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)


def copy_keeping_module_map(source: Path, target: Path) -> None:
    """``source`` (an ONNX file) written to ``target`` with only the module map left of its model
    metadata (keep_only_module_map), the same bytes as parsing, cleaning and serializing it, but
    by its top-level protobuf fields: the graph's bytes are copied, never parsed (a 554 MB graph
    parsed and serialized in one piece takes 2.2 GB more memory for a moment)."""
    import mmap

    with open(source, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data, \
            open(target, "wb") as out:
        view = memoryview(data)
        try:
            for field, start, payload, end in top_level_fields(data):
                if (field == METADATA_PROPS_FIELD
                        and string_entry(data, payload, end)[0] != MODULE_OUTPUTS_KEY):
                    continue
                out.write(view[start:end])
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        finally:
            view.release()
