"""Readers: what turns inputs into outputs on this machine, and what its CPU computes.

Every reader is a callable from an NCHW float32 batch to the output logits: ONNX Runtime
(onnxruntime.py), OpenVINO (openvino.py), TensorRT (tensorrt.py), and any of the CPU readers in
a qemu child that emulates another CPU (emulated.py); the reference, eager PyTorch, is the
toolchain's (attnvgg_export/runtime/eager.py). Readers know nothing of budgets. A
runtime is imported on first use, through ``runtime_module``: importing a reader never pulls in
another runtime (nor torch), so a target box needs only the runtimes it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from attnvgg_runtime.errors import ReaderUnavailable

Runner = Callable[[np.ndarray], np.ndarray]


def runtime_module(name: str, install_hint: str,
                   error: type[ReaderUnavailable] = ReaderUnavailable) -> ModuleType:
    """``import name`` on first use; where it is not installed, ``error`` naming what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise error(f"the {name} Python package is not installed ({e}); {install_hint}") from None


def release_memory() -> None:
    """Hand memory freed by a reader session back to the system: glibc keeps freed heap pages
    (a full-size session's weights and activation buffers, gigabytes) for reuse unless trimmed,
    so that the next session would sit on top of the last one's. A no-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to trim
        pass


def run_batches(runner: Runner, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """``runner`` over ``images`` in batches of ``batch`` (the last one may be smaller)."""
    return np.concatenate([runner(images[i:i + batch]) for i in range(0, len(images), batch)])


def reader_version(reader: str) -> str:
    """The version of the library behind a reader name (onnxruntime, openvino, openvino-bf16,
    tensorrt, eager): what a verdict is bound to besides the bytes and the CPU."""
    from importlib import metadata

    package = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "eager": "torch"}.get(
        reader, "openvino" if reader.startswith("openvino") else reader)
    candidates = ("onnxruntime-gpu", "onnxruntime") if package == "onnxruntime" else (package,)
    for name in candidates:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{package} (not installed)"
