"""Stage: engines/trt/{fp16,int8}.plan where TensorRT and a GPU exist (BACKEND=auto|tensorrt),
and OpenVINO IR (engines/openvino/) everywhere. ONNX Runtime CPU models (engines/ort/) come from
the precision stage. The manifest says which GPU backend was used and why."""

from __future__ import annotations

import socket
from pathlib import Path

from attnvgg_export.convert.openvino_ir import BF16_OPTIONS, ir_with_frame_input, onnx_to_openvino_ir
from attnvgg_export.convert.tensorrt_plan import EngineConfig, onnx_to_plan, resolve_backend
from attnvgg_export.manifest.lifecycle import forget_verdicts
from attnvgg_runtime.manifest import (
    Artifact,
    Manifest,
    ManifestError,
    artifact_entry,
    declare_served_ranges,
    read_manifest,
    served_range,
    write_manifest,
)
from attnvgg_runtime.metadata import describe, frame_input
from attnvgg_runtime.readers.cpu import openvino_has_bf16


def graph_path(manifest: Manifest, root: Path, precision: str, target: str) -> Path:
    """The ONNX graph of ``precision`` for ``target`` that the manifest lists."""
    found = [a.path for a in manifest.artifacts
             if a.format == "onnx" and a.precision == precision and a.target == target and a.input is None]
    if not found:
        raise ManifestError(f"the manifest lists no {precision} ONNX graph for {target}: run the "
                            f"precision stage first (make engine runs every stage)")
    return root / found[0]


def openvino_artifacts(root: Path, manifest: Manifest, log=print) -> list[Artifact]:
    """engines/openvino/: the fp32 IR (and, where this CPU computes bf16, the same IR listed as
    bf16 with OpenVINO's bf16 inference precision), the int8 IR and the int8 IR with a camera-frame
    input (uint8 NHWC, preprocessing inside), on every machine; each with its metadata."""
    folder = root / "engines" / "openvino"
    int8_graph = graph_path(manifest, root, "int8", "onnxruntime-cpu")
    metadata = describe(manifest)
    fp32 = onnx_to_openvino_ir(root / "model.onnx", folder / "model.fp32.xml", metadata)
    int8 = onnx_to_openvino_ir(int8_graph, folder / "model.int8.xml", metadata)
    frame = ir_with_frame_input(int8, folder / "model.int8.frame.xml", manifest.preprocessing,
                                metadata=describe(manifest, frame_input()))
    entries = [artifact_entry(fp32, root, "openvino-ir", "fp32", "openvino-cpu",
                              source=root / "model.onnx")]
    if openvino_has_bf16():
        entries.append(artifact_entry(fp32, root, "openvino-ir", "bf16", "openvino-cpu",
                                      runtime_options=BF16_OPTIONS))
    entries.append(artifact_entry(int8, root, "openvino-ir", "int8", "openvino-cpu",
                                  source=int8_graph))
    entries.append(artifact_entry(frame, root, "openvino-ir", "int8", "openvino-cpu", source=int8,
                                  frame=frame_input()))
    listed = ", ".join(f"{e.path} ({e.precision})" for e in entries)
    log(f"  OpenVINO IR: {listed}")
    return entries


def build_engines(manifest_path: Path, backend: str = "auto", log=print) -> Path:
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    chosen, why = resolve_backend(backend)
    log(why)
    forget_verdicts(manifest_path, manifest, log)  # before any artifact is rewritten
    manifest.backend = {"requested": backend, "used": chosen, "why": why}
    manifest.artifacts = [a for a in manifest.artifacts
                             if a.format not in ("plan", "openvino-ir")]
    manifest.artifacts += openvino_artifacts(root, manifest, log)
    if chosen == "tensorrt":
        trt_dir = root / "engines" / "trt"
        config = EngineConfig(timing_cache=trt_dir / "timing.cache")
        for name in ("fp16", "int8"):
            graph = graph_path(manifest, root, name, "tensorrt")
            # an int8 plan's profile starts where its verdict does (manifest.served_range)
            report = onnx_to_plan(graph, trt_dir / f"{name}.plan",
                                  served_range(manifest.dynamic, name), config)
            manifest.artifacts.append(artifact_entry(report.plan, root, "plan", name, "tensorrt",
                                                     source=graph))
            log(f"  built {report.plan} (layer info: {report.layers.name})")
        manifest.tensorrt = {"version": report.tensorrt_version, "gpu": report.gpu,
                             "compute_capability": report.compute_capability,
                             "version_compatible": config.version_compatible,
                             "host": socket.gethostname()}  # the gate fails, not skips, here
    declare_served_ranges(manifest)
    write_manifest(manifest_path, manifest)
    return manifest_path
