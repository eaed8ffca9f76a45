"""Stage: engines/trt/{fp16,int8}.plan where TensorRT and a GPU exist (BACKEND=auto|tensorrt).
On other machines ONNX Runtime CPU models (engines/ort/, from the precision stage) are the
engines, and the manifest says which backend was used and why."""

from __future__ import annotations

from pathlib import Path

from .manifest import artifact_entry, read_manifest, write_manifest
from .tensorrt_engine import EngineConfig, onnx_to_plan, resolve_backend


def build_engines(manifest_path: Path, backend: str = "auto", log=print) -> Path:
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    chosen, why = resolve_backend(backend)
    log(why)
    manifest["backend"] = {"requested": backend, "used": chosen, "why": why}
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["format"] != "plan"]
    if chosen == "tensorrt":
        from .quantize import Int8Target

        trt_dir = root / "engines" / "trt"
        config = EngineConfig(timing_cache=trt_dir / "timing.cache")
        for name, graph in (("fp16", root / "model.fp16.onnx"),
                            ("int8", root / Int8Target.TENSORRT.filename)):
            report = onnx_to_plan(graph, trt_dir / f"{name}.plan", manifest["dynamic"], config)
            manifest["artifacts"].append(artifact_entry(report.plan, root, "plan", name, "tensorrt"))
            log(f"  built {report.plan} (layer info: {report.layers.name})")
        manifest["tensorrt"] = {"version": report.tensorrt_version, "gpu": report.gpu,
                                "compute_capability": report.compute_capability,
                                "version_compatible": config.version_compatible}
    write_manifest(manifest_path, manifest)
    return manifest_path
