"""Which readers judge which artifact, and each reader made for this machine: ONNX Runtime and
OpenVINO read every portable graph, TensorRT the plans; under ATTNVGG_EMULATE_CPU the CPU
readers run in qemu children. Shared by the gate and the target box's verifier; torch-free."""

from __future__ import annotations

from pathlib import Path

from exporter.runtime.cpu import openvino_has_bf16, openvino_int8_has_vnni
from exporter.runtime.emulated import EmulatedRunner, emulated_cpu
from exporter.runtime.onnxruntime import ORT_SAVED_LEVEL, OnnxRuntimeRunner
from exporter.runtime.openvino import OpenVinoRunner, precision_hint, reader_name
from exporter.runtime.tensorrt import TensorRTRunner
from exporter.verify.structure import signed_int8_activations
from models import ReaderUnavailable


def readers_of(artifact: dict) -> list[str]:
    """The readers that judge ``artifact``, by the gate's names (openvino-bf16 for the bf16 entry)."""
    names = READERS[artifact["format"]]
    return [reader_name(artifact) if name == "openvino" else name for name in names]


READERS = {"onnx": ("onnxruntime", "openvino"), "ort": ("onnxruntime",), "plan": ("tensorrt",),
           "openvino-ir": ("openvino",)}


def runner_for(artifact: dict, root: Path, manifest: dict, reader: str):
    """The artifact under one reader: ONNX Runtime and OpenVINO on the CPU (every portable graph
    is read by both), TensorRT for plans (GPU machines). ReaderUnavailable where this machine
    cannot compute it."""
    path = root / artifact["path"]
    if reader == "tensorrt":
        # version-compatible plans embed host code: trusted, since this build made them
        trusted = manifest.get("tensorrt", {}).get("version_compatible", False)
        return TensorRTRunner(path, host_code_allowed=trusted)
    if reader == "openvino-bf16" and not openvino_has_bf16():
        raise ReaderUnavailable("this CPU does not compute bf16 (no AMX or AVX512-BF16): the bf16 "
                                "entry runs only where it does")
    if reader == "openvino" and not openvino_int8_has_vnni() and signed_int8_activations(artifact, root):
        raise ReaderUnavailable("OpenVINO on a CPU without VNNI saturates signed int8 activations "
                                "(int16 pair sums, docs/precision.md); ONNX Runtime reads this "
                                "graph here, and its target is TensorRT")
    return _cpu_runner(path, reader, "exact_int8_session_options" in artifact, precision_hint(artifact))


def _cpu_runner(path: Path, reader: str, exact: bool, hint: str, optimization: str | None = None,
                convert: bool = False):
    cpu = emulated_cpu()
    if cpu:  # the reader runs as that CPU would run it (exporter.runtime.emulated)
        return EmulatedRunner(cpu, "openvino" if reader.startswith("openvino") else "onnxruntime",
                              path, exact, hint, optimization, convert)
    if reader.startswith("openvino"):
        return OpenVinoRunner(path, hint, convert=convert)
    return OnnxRuntimeRunner(path, exact_int8=exact, optimization=optimization)


def listed(manifest: dict, path: str) -> dict:
    """The manifest's entry for ``path`` (a converted artifact's ``source``, say)."""
    return next(a for a in manifest["artifacts"] if a["path"] == path)


RECONVERTED = {"ort": "its source read by ONNX Runtime at the level the .ort was saved at",
               "openvino-ir": "its source converted again by OpenVINO's convert_model, in memory"}


def reconversion_runner(artifact: dict, root: Path, manifest: dict, reader: str):
    """A converted artifact's conversion done again on this box from its source graph, without
    writing a file: what the artifact must compute exactly, on this box's kernels (an .ort is its
    graph optimized at ORT_SAVED_LEVEL; an IR is convert_model of its graph). None for a plan,
    whose build is not repeated (its source's ONNX Runtime reading is the second reader)."""
    if artifact["format"] not in RECONVERTED:
        return None
    source = listed(manifest, artifact["source"])
    return _cpu_runner(root / source["path"], reader, "exact_int8_session_options" in source,
                       precision_hint(artifact),
                       ORT_SAVED_LEVEL if artifact["format"] == "ort" else None,
                       convert=artifact["format"] == "openvino-ir")
