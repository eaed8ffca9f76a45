"""Which backend BACKEND=auto will resolve to, guessed fast (no torch, no tensorrt import), for
Make's settings stamp: when tensorrt and a GPU appear on a machine, the stamp changes and
`make engine` builds the plans. The engines stage itself decides for real and records why.

    python -m attnvgg_export.runtime.gpu_probe auto   ->   tensorrt | ort
"""

from __future__ import annotations

import importlib.util
import os
import sys

NVIDIA_DRIVER_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


def probable_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    has_gpu = any(os.path.exists(path) for path in NVIDIA_DRIVER_FILES)
    return "tensorrt" if has_tensorrt and has_gpu else "ort"


if __name__ == "__main__":
    print(probable_backend(sys.argv[1] if len(sys.argv) > 1 else "auto"))
