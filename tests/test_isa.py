"""`make test-isa` reruns the numerics tests with torch held to other instruction sets. That is
only worth its time if the switches really change the kernels torch runs: shown here."""

import os
import subprocess
import sys

import pytest

PROBE = ("import torch\n"
         "torch.nn.Conv2d(64, 64, 3).eval()(torch.randn(2, 64, 32, 32))\n"
         "print('capability', torch.backends.cpu.get_cpu_capability())\n")


@pytest.mark.numerics
@pytest.mark.parametrize(("onednn", "aten", "expected"), [
    ("AVX2", "avx2", ("isa:Intel AVX2", "capability AVX2")),
])
def test_isa_switches_take_effect(onednn, aten, expected):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": onednn, "ATEN_CPU_CAPABILITY": aten,
           "ONEDNN_VERBOSE": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout[:1000]
