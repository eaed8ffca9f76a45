"""What this CPU's kernels compute: its name and ISA flags, and whether its int8 products saturate.

On x86 without VNNI or AMX, ONNX Runtime (MLAS) and OpenVINO (oneDNN) multiply u8 x s8 through
`vpmaddubsw`, which sums each pair of products in saturating int16: 255 * 127 * 2 = 64,770 is
clamped to 32,767. Whether that happens is asked of ONNX Runtime itself, by running a tiny
MatMulInteger whose pair sums overflow int16 (``saturation_probe``): a measurement, not a guess
from flags. It is right where /proc/cpuinfo is not: under `qemu-x86_64 -cpu Haswell` the kernels
follow the emulated `cpuid`, while /proc/cpuinfo still shows the host's flags.
"""

from __future__ import annotations

import base64
import functools
import os
import platform
from pathlib import Path

import numpy as np

from attnvgg_runtime.readers import runtime_module
from attnvgg_runtime.readers.emulated import emulated_cpu, emulated_probe_saturates

PROBE_DEPTH = 64  # products summed per output: 32 pairs of 255 * 127
PROBE_EXACT = 255 * 127 * PROBE_DEPTH  # 2,072,640; saturated pairs give 32 * 32,767 = 1,048,544


# ARM CPU parts (/proc/cpuinfo "CPU part", implementer 0x41) named where the model name is generic
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
             "0xd8e": "Neoverse-N3"}


def cpu_model_and_flags() -> tuple[str, set[str]] | None:
    """The CPU's model name and ISA flags from /proc/cpuinfo (x86 "flags", ARM "Features"; an ARM
    core named by its part number too); None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name", "")
    part = fields.get("CPU part", "").lower()
    if part:
        model = f"{model or 'ARM'} (CPU part {part}: {ARM_PARTS.get(part, 'unknown core')})"
    return model, set((fields.get("flags") or fields.get("Features", "")).split())


# A 195-byte ONNX graph: a MatMulInteger of u8 255s by s8 127s, PROBE_DEPTH deep, whose exact sum
# is PROBE_EXACT per output. Carried as bytes so that a box needs no onnx package to probe
# (tests/runtime/test_int8_kernels.py builds it with onnx's helpers and holds the two equal).
SATURATION_PROBE = base64.b64decode(
    "CAgSDmF0dG52Z2ctZXhwb3J0OqgBChgKAWEKAWISAWMiDU1hdE11bEludGVnZXISFWludDhfc2F0dXJhdGlvbl9wcm9i"
    "ZSpLCEAIARADQgFiSkB/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/WhMKAWESDgoMCAISCAoCCAEKAghAYhMKAWMSDgoMCAYSCAoCCAEKAggBQgQKABAN")


def run_saturation_probe(session_options: dict[str, str] | None = None) -> int:
    """What ONNX Runtime's U8S8 kernel sums the probe to here (PROBE_EXACT where it is exact)."""
    ort = runtime_module("onnxruntime", "install the runtime wheel's [onnxruntime] extra")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (session_options or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(SATURATION_PROBE, options,
                                   providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.full((1, PROBE_DEPTH), 255, np.uint8)})[0].min())


@functools.cache
def int8_products_saturate() -> bool:
    """Whether this CPU's default int8 kernels (ONNX Runtime's, and OpenVINO's for signed
    activations) sum u8 x s8 pairs in saturating int16: x86 without VNNI or AMX. Under
    ATTNVGG_EMULATE_CPU, the emulated CPU's (attnvgg_runtime.readers.emulated)."""
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
             "amx_int8", "amx_bf16",
             # ARM: int8 dot product, fp16 arithmetic, int8 matrix multiply, bf16, SVE
             "asimddp", "asimdhp", "i8mm", "bf16", "sve")


def cpu_identity() -> dict:
    """The CPU a measurement or a verdict is a property of: model name, the ISA flags that pick
    kernels, threads; under ATTNVGG_EMULATE_CPU the emulated CPU too (/proc/cpuinfo shows the
    host's flags there, not the kernels')."""
    model, flags = cpu_model_and_flags() or ("", set())
    identity = {"model": model or platform.processor() or "unknown",
                "isa": [f for f in ISA_FLAGS if f in flags], "threads": os.cpu_count()}
    return identity | ({"emulated": emulated_cpu()} if emulated_cpu() else {})
