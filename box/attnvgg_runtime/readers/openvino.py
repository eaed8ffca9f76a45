"""The OpenVINO reader (CPU plugin), over an ONNX graph or an IR: the second, independent reader
of every portable graph, and the Intel CPU target."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from attnvgg_runtime.manifest import Artifact
from attnvgg_runtime.readers import runtime_module

INSTALL_HINT = "install the runtime wheel's [openvino] extra (pip install openvino)"


def precision_hint(artifact: Artifact) -> str:
    """OpenVINO's inference precision for a manifest entry: "bf16" for the bf16 entry (the fp32
    IR listed again with that runtime option), else "f32"."""
    return artifact.runtime_options.get("INFERENCE_PRECISION_HINT", "f32")


def reader_name(artifact: Artifact) -> str:
    """How the gate, the bench and the reports name OpenVINO's reading of ``artifact``."""
    return "openvino-bf16" if precision_hint(artifact) == "bf16" else "openvino"


def converted_model(source: str | Path):
    """``source`` ONNX as OpenVINO's converter makes it into an IR (attnvgg_export.convert.openvino_ir
    saves exactly this): not what ``Core.read_model`` makes of the same file, whose numerics differ
    (the converter folds and fuses the int8 graph otherwise)."""
    ov = runtime_module("openvino", INSTALL_HINT)
    return ov.convert_model(str(source))


class OpenVinoRunner:
    """OpenVINO on the CPU over an ONNX graph or an IR (.xml): a second, independent reader.

    ``precision`` is OpenVINO's inference precision hint: "f32" computes what the graph says (an
    fp16 graph's casts included); "bf16" lets OpenVINO run the float layers in bf16, which it
    does by default on CPUs with AMX or AVX512-BF16, so it is always set explicitly here.
    ``convert``: an ONNX ``path`` converted as its IR would be (``converted_model``), in memory.
    ``path`` may be an IR's (xml, bin) bytes, read and checked by the caller: what was hashed
    is what runs."""

    def __init__(self, path: str | Path | tuple[bytes, bytes], precision: str = "f32",
                 threads: int | None = None, convert: bool = False, cache_dir: Path | None = None) -> None:
        ov = runtime_module("openvino", INSTALL_HINT)
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        if cache_dir is not None:  # compiled models kept there and read back (cold start)
            config["CACHE_DIR"] = str(cache_dir)
        core = ov.Core()
        if isinstance(path, tuple):
            model = core.read_model(*path)
        else:
            model = converted_model(path) if convert else str(path)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer([np.ascontiguousarray(batch)])
        return self.request.get_output_tensor(0).data.copy()
