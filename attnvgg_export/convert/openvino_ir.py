"""Stage: portable graphs -> OpenVINO IR (engines/openvino/*.xml + .bin), for Intel CPU edge boxes.

- model.fp32.xml from model.onnx, weights kept in float32 (openvino.save_model would compress
  them to fp16 by default). The same IR run with OpenVINO's bf16 inference precision, on CPUs
  with AMX or AVX512-BF16, is listed again as a bf16 artifact with that runtime option.
- model.int8.xml from model.int8-cpu.onnx, the U8S8 graph: computed alike on every x86 CPU.
  The symmetric int8-trt graph ran ~30% faster under OpenVINO on CPUs with VNNI or AMX, but
  without VNNI (AVX2, AVX-512 before Cascade Lake) OpenVINO's int8 kernels sum signed
  activations in saturating int16 pairs, and its error against eager doubled, past the int8
  budget (docs/edge.md). An IR is shipped to a box the build never saw, so it is the one that is
  right on any of them.

openvino is imported where it is used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from attnvgg_export.models import ToolchainError
from attnvgg_runtime.files import ensure_writable_dir
from attnvgg_runtime.metadata import FRAME_INPUT_NAME, set_ir_metadata
from attnvgg_runtime.readers import runtime_module
from attnvgg_runtime.readers.openvino import converted_model

BF16_OPTIONS = {"INFERENCE_PRECISION_HINT": "bf16"}


class OpenVinoError(ToolchainError):
    """OpenVINO could not read a graph or write its IR."""


def onnx_to_openvino_ir(source: Path, xml: Path, metadata: dict[str, str] | None = None) -> Path:
    """``source`` ONNX -> ``xml`` and its .bin, with ``metadata`` (attnvgg_runtime.metadata.describe)
    in its rt_info."""
    return _save(lambda: converted_model(source), xml, metadata, f"convert {source}")


def ir_with_frame_input(source: Path, xml: Path, preprocessing: dict, channel_order: str = "RGB",
                        metadata: dict[str, str] | None = None) -> Path:
    """The IR ``source`` with OpenVINO's PrePostProcessor in front: a uint8 NHWC input named
    ``frame`` (RGB, or BGR), converted to float, scaled by 1/255, normalized by mean and std and
    laid out NCHW inside the model (attnvgg_runtime.metadata.to_frames is its inverse)."""
    ov = runtime_module("openvino", "pip install openvino")
    from openvino.preprocess import ColorFormat, PrePostProcessor

    def framed():
        model = ov.Core().read_model(str(source))
        ppp = PrePostProcessor(model)
        order = ColorFormat.BGR if channel_order == "BGR" else ColorFormat.RGB
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
            .set_color_format(order)
        steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
        if channel_order == "BGR":
            steps = steps.convert_color(ColorFormat.RGB)
        steps.scale(255.0).mean(list(preprocessing["mean"])).scale(list(preprocessing["std"]))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        model = ppp.build()
        model.input().get_tensor().set_names({FRAME_INPUT_NAME})
        return model

    return _save(framed, xml, metadata, f"put a frame input in front of {source}")


def _save(make_model, xml: Path, metadata: dict[str, str] | None, what: str) -> Path:
    """The model ``make_model`` makes, saved as ``xml`` and its .bin, both written under temporary
    names and renamed (the .bin first: an .xml never appears without its weights)."""
    ov = runtime_module("openvino", "pip install openvino")
    folder = ensure_writable_dir(xml.parent)
    with tempfile.TemporaryDirectory(prefix=f".{xml.stem}.", dir=folder) as tmp:
        staged = Path(tmp) / xml.name
        try:
            model = make_model()
            set_ir_metadata(model, metadata or {})
            ov.save_model(model, str(staged), compress_to_fp16=False)
        except Exception as e:  # OpenVINO raises its own types; the message is what helps
            raise OpenVinoError(f"OpenVINO could not {what}: "
                                f"{str(e).strip().splitlines()[-1][:300]}") from e
        os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(staged, xml)
    return xml
