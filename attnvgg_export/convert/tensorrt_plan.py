"""Stage part: ONNX -> TensorRT plans (GPU machines with tensorrt only).

Written against the TensorRT 11 Python API: every network is strongly typed, so the plan's
precision is the ONNX graph's (model.fp16.onnx -> fp16 plan, model.int8-trt.onnx -> int8 plan);
there are no precision builder flags and no calibrator. tensorrt is imported lazily: importing
this module works on machines without it.

NOT YET RUN ON HARDWARE: the development machines have no GPU and cannot install tensorrt. This
module is tested against a test double of the tensorrt module (tests/convert/fake_tensorrt.py)
and by GPU-marked tests that skip here; docs/tensorrt.md gives the commands to run those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from attnvgg_export.models import ToolchainError
from attnvgg_runtime.files import atomic_path
from attnvgg_runtime.readers.tensorrt import (
    INPUT_NAME,
    TensorRTUnavailable,
    deserialize,
    gpu_identity,
    gpu_status,
    import_tensorrt,
    recording_logger,
)


class EngineBuildError(ToolchainError):
    """TensorRT could not parse the ONNX graph or build a plan from it."""


def resolve_backend(requested: str) -> tuple[str, str]:
    """("tensorrt" | "ort", why). BACKEND=tensorrt without tensorrt or a GPU is an error."""
    if requested not in ("auto", "tensorrt", "ort"):
        raise ToolchainError(f"BACKEND={requested!r} is not one of auto, tensorrt, ort")
    if requested == "ort":
        return "ort", "BACKEND=ort: ONNX Runtime on the CPU, as asked"
    try:
        trt = import_tensorrt()
        has_gpu, gpu = gpu_status()
        if not has_gpu:
            raise TensorRTUnavailable(f"tensorrt {trt.__version__} is installed but {gpu}")
    except TensorRTUnavailable as e:
        if requested == "tensorrt":
            raise TensorRTUnavailable(f"BACKEND=tensorrt, but {e}") from None
        return "ort", f"BACKEND=auto: ONNX Runtime on the CPU, because {e}"
    return "tensorrt", f"BACKEND={requested}: TensorRT {trt.__version__} on {gpu}"


@dataclass(frozen=True)
class EngineConfig:
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None  # read before and written after each build
    hardware_compatible: bool = False  # Ampere+ portable plan (slower, loads on any Ampere+)
    version_compatible: bool = False  # loads on later TensorRT runtimes (lean runtime)


@dataclass(frozen=True)
class PlanReport:
    plan: Path
    layers: Path
    tensorrt_version: str
    gpu: str
    compute_capability: str


def _profile_shapes(dynamic: dict) -> tuple[tuple, tuple, tuple]:
    b, h, w = dynamic["batch"], dynamic["height"], dynamic["width"]
    return tuple((b[k], 3, h[k], w[k]) for k in ("min", "opt", "max"))


def onnx_to_plan(onnx_path: Path, plan_path: Path, dynamic: dict, config: EngineConfig,
                 trt=None) -> PlanReport:
    """Parse, build and serialize one plan; the profile is the manifest's declared range."""
    trt = trt or import_tensorrt()
    logger = recording_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 11: strongly typed, no flag needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        details = "; ".join(f"node {e.node_name() or '?'} ({e.node_operator() or '?'}): {e.desc()}"
                            for e in errors) or "; ".join(logger.errors) or "no details"
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {details}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if config.hardware_compatible:
        builder_config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if config.version_compatible:
        builder_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *_profile_shapes(dynamic))
    builder_config.add_optimization_profile(profile)
    cache = config.timing_cache
    cache_bytes = cache.read_bytes() if cache and cache.is_file() else b""
    builder_config.set_timing_cache(builder_config.create_timing_cache(cache_bytes), False)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build a plan from {onnx_path}: "
                               + ("; ".join(logger.errors) or "see the TensorRT log above"))
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))  # a plain plan: trtexec, Triton and C++ load it
    if config.timing_cache:
        with atomic_path(config.timing_cache) as tmp:
            tmp.write_bytes(bytes(builder_config.get_timing_cache().serialize()))
    layers = plan_path.with_suffix(".layers.json")
    engine = deserialize(trt, logger, bytes(serialized), config.version_compatible, plan_path)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    with atomic_path(layers) as tmp:
        tmp.write_text(json.dumps(json.loads(info), indent=1))
    gpu, capability = gpu_identity()
    return PlanReport(plan_path, layers, str(trt.__version__), gpu, capability)


