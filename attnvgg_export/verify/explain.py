"""Where error enters: each module's output in an artifact against eager PyTorch's own, on the
same images, so that an fp16 or int8 error is traced to the module that adds it
(`attnvgg-export explain --manifest M --artifact A`).

The export records which ONNX tensor each module's output became (attnvgg_export.graphs.module_map:
every layer with weights, the pools, and the SE / attention blocks as a whole); the fp16 and Q/DQ
graphs keep those float tensor names. The graph is run by ONNX Runtime with those tensors as
extra outputs, eager PyTorch with forward hooks, batch by batch, and only sums are kept, so
memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from attnvgg_export.calibration.graph_outputs import save_with_outputs
from attnvgg_export.models import ToolchainError
from attnvgg_export.report.report import format_module_errors
from attnvgg_export.verify.cases import heldout_images
from attnvgg_runtime.files import write_text_atomic
from attnvgg_runtime.manifest import read_manifest, verify_artifacts
from attnvgg_runtime.readers.onnxruntime import OnnxRuntimeRunner
from attnvgg_runtime.verify.measures import RelativeL2

if TYPE_CHECKING:
    from torch import nn

MODULE_OUTPUTS_KEY = "attnvgg.module_outputs"  # the graph metadata attnvgg_export.graphs.module_map writes
EXPLAIN_JSON = "explain.json"
EXPLAIN_IMAGES = 8  # images a module-by-module measurement runs on


@dataclass(frozen=True)
class ModuleError:
    module: str  # the PyTorch module, e.g. features.4.fc.2
    kind: str  # its class, e.g. Conv2d, SEBlock
    tensor: str  # the ONNX tensor that holds its output
    rel_l2: float  # ||artifact - eager|| / ||eager|| at this module's output
    added: float  # rel_l2 minus the previous module's: what this module adds


def read_module_outputs(path: Path) -> list[dict]:
    """The module map of a graph this toolchain wrote (fp32, fp16 and int8 graphs keep the float
    tensor names), restricted to tensors the graph still has."""
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    produced = {o for n in proto.graph.node for o in n.output}
    return [m for m in json.loads(props.get(MODULE_OUTPUTS_KEY, "[]")) if m["tensor"] in produced]


def module_errors(graph: Path, model: nn.Module, images: np.ndarray, batch: int = 2,
                  exact_int8: bool = False) -> list[ModuleError]:
    """Each mapped module's output error in ``graph`` (run by ONNX Runtime, ``exact_int8`` as in
    OnnxRuntimeRunner) against ``model``. Small batches: every module's output of both is held
    at once (at full size and batch 8, about 1.4 GB of them)."""
    from attnvgg_export.runtime.eager import module_outputs  # torch: imported where eager runs

    modules = read_module_outputs(graph)
    if not modules:
        raise ToolchainError(f"{graph} holds no module map (it was not written by this toolchain's "
                             f"export, or was re-saved by another tool); re-export it")
    errors = [RelativeL2() for _ in modules]
    # the graph with its module outputs saved beside its weights: in memory it would be the graph
    # loaded, its serialized bytes and the session's weights at once (the gate's peak at full size)
    with tempfile.TemporaryDirectory(prefix="explain-") as tmp:
        augmented = save_with_outputs(graph, [m["tensor"] for m in modules], Path(tmp))
        runner = OnnxRuntimeRunner(augmented, exact_int8=exact_int8, memory_arena=False)
        names = [o.name for o in runner.session.get_outputs()]
        for start in range(0, len(images), batch):
            x = np.ascontiguousarray(images[start:start + batch])
            eager = module_outputs(model, [m["module"] for m in modules], x)
            outputs = dict(zip(names, runner.session.run(None, {runner.input_name: x}), strict=True))
            for error, m in zip(errors, modules, strict=True):
                error.add(outputs[m["tensor"]], eager[m["module"]])
    rel = [e.value for e in errors]
    previous = [0.0, *rel[:-1]]
    return [ModuleError(m["module"], m["kind"], m["tensor"], r, r - p)
            for m, r, p in zip(modules, rel, previous, strict=True)]


def first_past(errors: list[ModuleError], budget: float) -> ModuleError | None:
    """The first module (in forward order) whose output error exceeds ``budget``."""
    return next((e for e in errors if e.rel_l2 > budget), None)


def write_explain_json(root: Path, results: dict[str, list[ModuleError]], images: int) -> Path:
    data = {"images": images, "artifacts": {path: [asdict(e) for e in errors]
                                            for path, errors in results.items()}}
    return write_text_atomic(root / EXPLAIN_JSON, json.dumps(data, indent=1) + "\n")


def explain_artifact(manifest_path: Path, artifact: str, images: int = 8, log=print) -> list[ModuleError]:
    """The CLI's `explain`: per-module errors of one portable graph on the build's held-out images."""
    manifest_path = Path(manifest_path)
    verify_artifacts(manifest_path)
    manifest = read_manifest(manifest_path)
    entry = next((a for a in manifest.artifacts if a.path == artifact), None)
    graphs = [a.path for a in manifest.artifacts if a.format == "onnx"]
    if entry is None or entry.format != "onnx":
        raise ToolchainError(f"{artifact!r} is not an ONNX graph of {manifest_path}; explain one of "
                             f"{', '.join(graphs)} (an .ort model is its .onnx graph optimized)")
    from attnvgg_export.runtime.eager import model_from_manifest

    heldout = heldout_images(manifest)
    errors = module_errors(manifest_path.parent / artifact, model_from_manifest(manifest),
                           heldout.images[:images],
                           exact_int8=entry.exact_int8_session_options is not None)
    log(f"{artifact} against eager PyTorch fp32, module by module, on {min(images, len(heldout))} "
        f"held-out images; the ten modules that add the most error:\n")
    log(format_module_errors([asdict(e) for e in errors]))
    log("\nall modules in forward order: " + ", ".join(f"{e.module} {e.rel_l2:.2e}" for e in errors))
    return errors
