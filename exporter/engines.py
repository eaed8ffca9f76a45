"""Stage: engines/trt/{fp16,int8}.plan where TensorRT and a GPU exist (BACKEND=auto|tensorrt),
and OpenVINO IR (engines/openvino/) everywhere. ONNX Runtime CPU models (engines/ort/) come from
the precision stage. The manifest says which GPU backend was used and why."""

from __future__ import annotations

from pathlib import Path

from .manifest import artifact_entry, read_manifest, write_manifest
from .tensorrt_engine import EngineConfig, onnx_to_plan, resolve_backend


def openvino_artifacts(root: Path, log=print) -> list[dict]:
    """engines/openvino/: the fp32 IR (and, where this CPU computes bf16, the same IR listed as
    bf16 with OpenVINO's bf16 inference precision) and the int8 IR, on every machine."""
    from .openvino_ir import BF16_OPTIONS, cpu_has_bf16, onnx_to_openvino_ir
    from .quantize import Int8Target

    folder = root / "engines" / "openvino"
    fp32 = onnx_to_openvino_ir(root / "model.onnx", folder / "model.fp32.xml")
    int8 = onnx_to_openvino_ir(root / Int8Target.CPU.filename, folder / "model.int8.xml")
    entries = [artifact_entry(fp32, root, "openvino-ir", "fp32", "openvino-cpu")]
    if cpu_has_bf16():
        entries.append(artifact_entry(fp32, root, "openvino-ir", "bf16", "openvino-cpu",
                                      BF16_OPTIONS))
    entries.append(artifact_entry(int8, root, "openvino-ir", "int8", "openvino-cpu"))
    listed = ", ".join(f"{e['path']} ({e['precision']})" for e in entries)
    log(f"  OpenVINO IR: {listed}")
    return entries


def build_engines(manifest_path: Path, backend: str = "auto", log=print) -> Path:
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    chosen, why = resolve_backend(backend)
    log(why)
    manifest["backend"] = {"requested": backend, "used": chosen, "why": why}
    manifest["artifacts"] = [a for a in manifest["artifacts"]
                             if a["format"] not in ("plan", "openvino-ir")]
    manifest["artifacts"] += openvino_artifacts(root, log)
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
