"""Stage: portable graphs -> OpenVINO IR (engines/openvino/*.xml + .bin), for Intel CPU edge boxes.

- model.fp32.xml from model.onnx, weights kept in float32 (openvino.save_model would compress
  them to fp16 by default). The same IR run with OpenVINO's bf16 inference precision, on CPUs
  with AMX or AVX512-BF16, is listed again as a bf16 artifact with that runtime option.
- model.int8.xml from model.int8-trt.onnx, the symmetric Q/DQ graph: OpenVINO's int8 kernels take
  symmetric int8 activations without zero-point compensation, and it ran faster than the U8S8
  graph on both CPUs measured (docs/edge.md), at the same accuracy.

openvino is imported where it is used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from models import ToolchainError

from .files import ensure_writable_dir

BF16_OPTIONS = {"INFERENCE_PRECISION_HINT": "bf16"}


class OpenVinoError(ToolchainError):
    """OpenVINO could not read a graph or write its IR."""


def cpu_has_bf16() -> bool:
    from .runners import openvino_has_bf16

    return openvino_has_bf16()


def onnx_to_openvino_ir(source: Path, xml: Path) -> Path:
    """``source`` ONNX -> ``xml`` and its .bin, both written under temporary names and renamed
    (the .bin first: an .xml never appears without its weights)."""
    import openvino as ov

    folder = ensure_writable_dir(xml.parent)
    with tempfile.TemporaryDirectory(prefix=f".{xml.stem}.", dir=folder) as tmp:
        staged = Path(tmp) / xml.name
        try:
            ov.save_model(ov.convert_model(str(source)), str(staged), compress_to_fp16=False)
        except Exception as e:  # OpenVINO raises its own types; the message is what helps
            raise OpenVinoError(f"OpenVINO could not convert {source}: "
                                f"{str(e).strip().splitlines()[-1][:300]}") from e
        os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(staged, xml)
    return xml
