"""The TensorRT reader: loads a plan and runs it on device buffers (GPU machines with tensorrt
only); attnvgg_export.convert.tensorrt_plan builds the plans. tensorrt is imported on first use
(attnvgg_runtime.readers.runtime_module): importing this module works on machines without it.
Its device buffers are torch CUDA tensors, hence the package's [tensorrt] extra brings torch.

NOT YET RUN ON HARDWARE: the development machines have no GPU and cannot install tensorrt. This
module is tested against a test double of the tensorrt module (tests/convert/fake_tensorrt.py)
and by GPU-marked tests that skip here; docs/tensorrt.md gives the commands to run those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnvgg_runtime.errors import ReaderUnavailable, ToolchainError
from attnvgg_runtime.readers import runtime_module

INSTALL_HINT = ("install the extra on a machine with an NVIDIA GPU and driver: "
                "pip install -e '.[tensorrt]' (tensorrt 11 comes from NVIDIA's package index)")
INPUT_NAME = "input"


class TensorRTUnavailable(ReaderUnavailable):
    """tensorrt or an NVIDIA GPU is missing."""


class EngineLoadError(ToolchainError):
    """A plan could not be deserialized (another GPU or TensorRT version, or a damaged file)."""


class ShapeOutsideProfileError(ToolchainError):
    """An input shape lies outside the plan's optimization profile."""


def import_tensorrt():
    trt = runtime_module("tensorrt", INSTALL_HINT, TensorRTUnavailable)
    major = int(str(trt.__version__).split(".")[0])
    if major < 11:
        raise TensorRTUnavailable(f"tensorrt {trt.__version__} is installed; this toolchain needs "
                                  f"TensorRT 11 (strongly typed networks); {INSTALL_HINT}")
    return trt


def gpu_status() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False, "torch is missing"
    if not torch.cuda.is_available():
        return False, "no NVIDIA GPU visible to CUDA (torch.cuda.is_available() is False)"
    return True, torch.cuda.get_device_name(0)


def recording_logger(trt):
    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return RecordingLogger()


def deserialize(trt, logger, data: bytes, host_code_allowed: bool, path: Path):
    """A version-compatible plan embeds the builder's host code (the lean runtime), which the
    runtime refuses unless allowed: allow it only for plans this toolchain built (trusted)."""
    runtime = trt.Runtime(logger)
    runtime.engine_host_code_allowed = host_code_allowed
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        reason = "; ".join(logger.errors) or "no reason given"
        hint = ("" if host_code_allowed else " If it is a version-compatible plan, it embeds host "
                "code: load it with host code allowed (only for plans you trust).")
        raise EngineLoadError(
            f"{path} could not be loaded: {reason}. Plans only load on the GPU model and "
            f"TensorRT version that built them; rebuild with `make engine` on this machine.{hint}")
    return engine


def gpu_identity() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        return "unknown", "unknown"
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


class CudaBuffers:
    """Device memory and a dedicated CUDA stream, from torch (already a dependency). A runner
    never uses the legacy default stream, which would serialize it with all other work."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def to_device(self, array: np.ndarray):
        with self.torch.cuda.stream(self.stream):
            return self.torch.from_numpy(array).to("cuda", non_blocking=False)

    def empty(self, shape: tuple[int, ...]):
        with self.torch.cuda.stream(self.stream):
            return self.torch.empty(shape, dtype=self.torch.float32, device="cuda")

    @staticmethod
    def address(buffer) -> int:
        return buffer.data_ptr()

    def to_host(self, buffer) -> np.ndarray:
        self.stream.synchronize()
        return buffer.cpu().numpy()


class TensorRTRunner:
    """Deserializes a plan, sets input shapes, runs on device buffers, returns host arrays.

    ``host_code_allowed``: load version-compatible plans, which embed host code (trusted plans
    only). ``buffers``: device memory and stream (CudaBuffers; tests pass a host double)."""

    def __init__(self, plan_path: Path, trt=None, host_code_allowed: bool = False,
                 buffers=None) -> None:
        trt = trt or import_tensorrt()
        plan_path = Path(plan_path)
        if buffers is None:
            has_gpu, why = gpu_status()
            if not has_gpu:
                raise TensorRTUnavailable(f"cannot run {plan_path.name}: {why}")
            buffers = CudaBuffers()
        logger = recording_logger(trt)
        self.engine = deserialize(trt, logger, plan_path.read_bytes(), host_code_allowed, plan_path)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineLoadError(f"{plan_path}: TensorRT could not create an execution context "
                                  f"(out of device memory?): {'; '.join(logger.errors) or 'no reason'}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if n != self.input)
        self.profile = [tuple(s) for s in self.engine.get_tensor_profile_shape(self.input, 0)]
        self.plan_path = plan_path
        self.buffers = buffers

    def check_shape(self, shape: tuple[int, ...]) -> None:
        low, _, high = self.profile
        inside = len(shape) == len(low) and all(
            lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True))
        if not inside:
            raise ShapeOutsideProfileError(
                f"input shape {tuple(shape)} is outside the profile of {self.plan_path.name} "
                f"(min {low}, max {high}); export with a wider range (--batch/--height/--width)")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.check_shape(batch.shape)
        x = self.buffers.to_device(np.ascontiguousarray(batch, dtype=np.float32))
        if not self.context.set_input_shape(self.input, tuple(batch.shape)):
            raise ShapeOutsideProfileError(f"TensorRT refused input shape {tuple(batch.shape)} "
                                           f"for {self.plan_path.name}")
        y = self.buffers.empty(tuple(self.context.get_tensor_shape(self.output)))
        self.context.set_tensor_address(self.input, self.buffers.address(x))
        self.context.set_tensor_address(self.output, self.buffers.address(y))
        if not self.context.execute_async_v3(self.buffers.stream_handle):
            raise EngineLoadError(f"TensorRT failed to run {self.plan_path.name}")
        return self.buffers.to_host(y)
