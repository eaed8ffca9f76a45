"""Which readers judge which artifact, and each reader made for this machine: ONNX Runtime and
OpenVINO read every portable graph, TensorRT the plans; under ATTNVGG_EMULATE_CPU the CPU
readers run in qemu children. Shared by the gate and the target box's verifier; torch-free."""

from __future__ import annotations

from pathlib import Path

from attnvgg_runtime.errors import ReaderUnavailable
from attnvgg_runtime.manifest import Artifact, Manifest, inside_build
from attnvgg_runtime.metadata import (
    NormalizedOutside,
    check_metadata,
    metadata_of_file,
    session_metadata,
    with_frames,
)
from attnvgg_runtime.readers.cpu import cpu_identity, openvino_has_bf16, openvino_int8_has_vnni
from attnvgg_runtime.readers.emulated import EmulatedRunner, emulated_cpu
from attnvgg_runtime.readers.onnxruntime import ORT_SAVED_LEVEL, OnnxRuntimeRunner
from attnvgg_runtime.readers.openvino import OpenVinoRunner, precision_hint, reader_name
from attnvgg_runtime.readers.tensorrt import TensorRTRunner


def readers_of(artifact: Artifact) -> list[str]:
    """The readers that judge ``artifact``, by the gate's names (openvino-bf16 for the bf16 entry)."""
    names = READERS[artifact.format]
    if artifact.input is not None:  # a frame artifact: the reader of its target (the graph it
        names = names[:1]           # wraps is read by both)
    return [reader_name(artifact) if name == "openvino" else name for name in names]


READERS = {"onnx": ("onnxruntime", "openvino"), "ort": ("onnxruntime",), "plan": ("tensorrt",),
           "openvino-ir": ("openvino",)}
KNOWN_READERS = ("onnxruntime", "openvino", "openvino-bf16", "tensorrt")  # the gate's names


def runner_for(artifact: Artifact, root: Path, manifest: Manifest, reader: str, threads: int | None = None,
               plan_code_allowed: bool = False):
    """The artifact under one reader: ONNX Runtime and OpenVINO on the CPU (every portable graph
    is read by both), TensorRT for plans (GPU machines). ReaderUnavailable where this machine
    cannot compute it. ``threads``: the CPU readers' threads (None: every core)."""
    path = inside_build(root, artifact.path)
    if artifact.format in ("onnx", "openvino-ir"):  # read from the file; an .ort's below; a plan has none
        check_metadata(metadata_of_file(path, artifact.format), manifest, artifact, str(path))
    if reader == "tensorrt":
        # version-compatible plans embed host code: allowed only by whoever runs this
        # (--allow-plan-code), never by the manifest, an unsigned file anyone could edit
        return TensorRTRunner(path, host_code_allowed=plan_code_allowed)
    if reader == "openvino-bf16" and not openvino_has_bf16():
        raise ReaderUnavailable("this CPU does not compute bf16 (no AMX or AVX512-BF16): the bf16 "
                                "entry runs only where it does")
    if reader == "openvino" and not openvino_int8_has_vnni() and signed_int8_activations(artifact):
        raise ReaderUnavailable("OpenVINO on a CPU without VNNI saturates signed int8 activations "
                                "(int16 pair sums, docs/precision.md); ONNX Runtime reads this "
                                "graph here, and its target is TensorRT")
    runner = _cpu_runner(path, reader, artifact.exact_int8_session_options is not None,
                         precision_hint(artifact), threads=threads)
    if artifact.format == "ort":  # its flatbuffer read by the session that runs it (a qemu child's: anew)
        found = (session_metadata(runner.session) if isinstance(runner, OnnxRuntimeRunner)
                 else metadata_of_file(path, "ort"))
        check_metadata(found, manifest, artifact, str(path))
    return with_frames(runner, artifact, manifest)


def _cpu_runner(path: Path, reader: str, exact: bool, hint: str, optimization: str | None = None,
                convert: bool = False, threads: int | None = None):
    cpu = emulated_cpu()
    if cpu:  # the reader runs as that CPU would run it (attnvgg_runtime.readers.emulated)
        return EmulatedRunner(cpu, "openvino" if reader.startswith("openvino") else "onnxruntime",
                              path, exact, hint, optimization, convert)
    if reader.startswith("openvino"):
        return OpenVinoRunner(path, hint, threads=threads, convert=convert)
    return OnnxRuntimeRunner(path, threads=threads, exact_int8=exact, optimization=optimization,
                             memory_arena=False)


def not_gated_here(artifact: Artifact, reader: str) -> str | None:
    """Why this reading is measured and reported but not judged on this CPU, or None. One case:
    an fp16 graph under ONNX Runtime on an ARM core with fp16 arithmetic (asimdhp, ARMv8.2+),
    where ONNX Runtime computes its convolutions in fp16, accumulations included, at every
    optimization level (docs/precision.md, "ARM"); the graph's target is TensorRT, and the gate's
    CPU reading of it stands for fp16 storage with float32 arithmetic. A box of this class is not
    served the fp16 graph (attnvgg_runtime.artifacts.runnable)."""
    if artifact.precision == "fp16" and reader == "onnxruntime" and "asimdhp" in cpu_identity()["isa"]:
        return ("ONNX Runtime computes fp16 in fp16 arithmetic on this ARM core (asimdhp), not as the "
                "graph's target (TensorRT) does: measured and reported, not gated; ship fp32 or int8 "
                "to this box class")
    return None


def signed_int8_activations(artifact: Artifact) -> bool:
    """An int8 ONNX graph whose activations are quantized to signed int8 (the int8-trt graph), as
    the manifest records it (`activations`, schema 1.5, read from the graph at build time by
    attnvgg_export.verify.structure.qdq_types). Older manifests: the graph that carries
    `exact_int8_session_options`, the one with 8-bit weights and signed activations."""
    if artifact.format != "onnx" or artifact.precision != "int8":
        return False
    if artifact.activations is not None:
        return artifact.activations == "int8"
    return artifact.exact_int8_session_options is not None


RECONVERTED = {"ort": "its source read by ONNX Runtime at the level the .ort was saved at",
               "openvino-ir": "its source converted again by OpenVINO's convert_model, in memory",
               "frame": "the artifact it wraps, fed the same frames normalized outside the graph"}


def reconversion_words(artifact: Artifact) -> str:
    """What a converted artifact is held to, in words (RECONVERTED)."""
    return RECONVERTED["frame" if artifact.input is not None else artifact.format]


def reconversion_runner(artifact: Artifact, root: Path, manifest: Manifest, reader: str):
    """A converted artifact's conversion done again on this box from its source graph, without
    writing a file: what the artifact must compute exactly, on this box's kernels (an .ort is its
    graph optimized at ORT_SAVED_LEVEL; an IR is convert_model of its graph). None for a plan,
    whose build is not repeated (its source's ONNX Runtime reading is the second reader)."""
    source = manifest.artifact(artifact.source)
    if artifact.input is not None:  # preprocessing outside the graph it wraps, in numpy
        return NormalizedOutside(runner_for(source, root, manifest, reader), manifest.preprocessing,
                                 artifact.input.get("channel_order", "RGB"))
    if artifact.format not in RECONVERTED:
        return None
    return _cpu_runner(inside_build(root, source.path), reader, source.exact_int8_session_options is not None,
                       precision_hint(artifact),
                       ORT_SAVED_LEVEL if artifact.format == "ort" else None,
                       convert=artifact.format == "openvino-ir")
