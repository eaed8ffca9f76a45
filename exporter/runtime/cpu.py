"""What this CPU's kernels compute: its name and ISA flags, and whether its int8 products saturate.

On x86 without VNNI or AMX, ONNX Runtime (MLAS) and OpenVINO (oneDNN) multiply u8 x s8 through
`vpmaddubsw`, which sums each pair of products in saturating int16: 255 * 127 * 2 = 64,770 is
clamped to 32,767. Whether that happens is asked of ONNX Runtime itself, by running a tiny
MatMulInteger whose pair sums overflow int16 (``saturation_probe``): a measurement, not a guess
from flags. It is right where /proc/cpuinfo is not: under `qemu-x86_64 -cpu Haswell` the kernels
follow the emulated `cpuid`, while /proc/cpuinfo still shows the host's flags.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import numpy as np

from exporter.runtime import runtime_module
from exporter.runtime.emulated import emulated_cpu, emulated_probe_saturates

PROBE_DEPTH = 64  # products summed per output: 32 pairs of 255 * 127
PROBE_EXACT = 255 * 127 * PROBE_DEPTH  # 2,072,640; saturated pairs give 32 * 32,767 = 1,048,544


def cpu_model_and_flags() -> tuple[str, set[str]] | None:
    """The CPU's model name and ISA flags from /proc/cpuinfo; None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def saturation_probe_model() -> bytes:
    """A MatMulInteger of u8 255s by s8 127s, PROBE_DEPTH deep: exactly PROBE_EXACT per output
    where int8 products are summed exactly. (consumer/classify.py carries these bytes.)"""
    from onnx import TensorProto, helper

    weights = helper.make_tensor("b", TensorProto.INT8, [PROBE_DEPTH, 1],
                                 np.full(PROBE_DEPTH, 127, np.int8).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_saturation_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, PROBE_DEPTH])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [1, 1])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="attnvgg-export")
    model.ir_version = 8  # onnx 1.23 stamps 14; ONNX Runtime 1.31 reads up to 13
    return model.SerializeToString()


def run_saturation_probe(session_options: dict[str, str] | None = None) -> int:
    """What ONNX Runtime's U8S8 kernel sums the probe to here (PROBE_EXACT where it is exact)."""
    ort = runtime_module("onnxruntime", "pip install onnxruntime-gpu (or onnxruntime)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (session_options or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(saturation_probe_model(), options,
                                   providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.full((1, PROBE_DEPTH), 255, np.uint8)})[0].min())


@functools.cache
def int8_products_saturate() -> bool:
    """Whether this CPU's default int8 kernels (ONNX Runtime's, and OpenVINO's for signed
    activations) sum u8 x s8 pairs in saturating int16: x86 without VNNI or AMX. Under
    ATTNVGG_EMULATE_CPU, the emulated CPU's (exporter.runtime.emulated)."""
    cpu = emulated_cpu()
    if cpu:
        return emulated_probe_saturates(cpu)
    return run_saturation_probe() != PROBE_EXACT


# ONNX Runtime's session entry for exact int8 products on x86 (kOrtSessionOptionsAvx2PrecisionMode):
# its U8S8 kernels then run as U8U8 with int32 sums. It is set only where this CPU's int8 pair sums
# saturate: with VNNI or AMX the default kernels are exact already and faster, and on x86 the entry
# would switch them too. The manifest records it on the int8 graphs with 8-bit weights (the
# TensorRT graph: `exact_int8_session_options`, docs/manifest.md); the consumer applies it by the
# same probe. The CPU graph's 7-bit weights cannot saturate and need none.
EXACT_INT8 = {"session.x64quantprecision": "1"}


def exact_int8_options() -> dict[str, str]:
    """The ONNX Runtime session entries that make int8 exact on this CPU (none where it is)."""
    return dict(EXACT_INT8) if int8_products_saturate() else {}


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below any int8 dot-product instruction (VNNI, AMX), and
# below bf16
_NO_VNNI_CAPS = {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
_NO_BF16_CAPS = _NO_VNNI_CAPS | {"AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI"}


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AMX or AVX512-BF16). Its
    capability list ignores a ONEDNN_MAX_CPU_ISA cap below bf16, under which it then refuses the
    bf16 hint, so the cap is read too."""
    ov = runtime_module("openvino", "pip install openvino")
    if emulated_cpu() or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_BF16_CAPS:
        return False  # (the only emulated CPU, Haswell, has no bf16)
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_int8_has_vnni() -> bool:
    """Whether OpenVINO's CPU plugin multiplies int8 with VNNI or AMX here. Without them oneDNN
    computes signed int8 activations through u8 x s8 pairs summed in int16 (vpmaddubsw), which
    saturate: the int8-trt graph of the CI build measured rel L2 0.075 against fp32 with VNNI and
    0.144 with ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE (docs/precision.md). The int8-cpu graph's
    7-bit weights keep every pair sum in range, so OpenVINO reads it right either way."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_VNNI_CAPS:
        return False
    return not int8_products_saturate()


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_int8", "amx_bf16")


def cpu_identity() -> dict:
    """The CPU a measurement or a verdict is a property of: model name, the ISA flags that pick
    kernels, threads; under ATTNVGG_EMULATE_CPU the emulated CPU too (/proc/cpuinfo shows the
    host's flags there, not the kernels')."""
    model, flags = cpu_model_and_flags() or ("", set())
    identity = {"model": model or platform.processor() or "unknown",
                "isa": [f for f in ISA_FLAGS if f in flags], "threads": os.cpu_count()}
    return identity | ({"emulated": emulated_cpu()} if emulated_cpu() else {})
