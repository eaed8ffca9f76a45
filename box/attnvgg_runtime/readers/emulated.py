"""Readers on an emulated CPU: ONNX Runtime or OpenVINO in a child process under qemu-user.

ONNX Runtime and OpenVINO choose their kernels from `cpuid`, which `qemu-x86_64 -cpu Haswell`
emulates: there they run their AVX2 kernels (int8 without VNNI) on any x86 host. Only the
readers run emulated (about 30 times slower); eager PyTorch, the budgets and the report stay
native. `ATTNVGG_EMULATE_CPU=Haswell make parity` gates a build so (make test-isa does, on the
reduced CI build). The child (attnvgg_runtime.readers.emulated_reader) runs the native gate's own
readers (no torch) and streams .npy arrays over pipes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ENVIRONMENT = "ATTNVGG_EMULATE_CPU"
# features qemu's TCG cannot emulate, named off so that it does not warn at every start
QEMU_CPUS = {"Haswell": "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-rtm,-invpcid"}


class EmulationError(RuntimeError):
    pass


def emulated_cpu() -> str | None:
    """The CPU the readers run as (ATTNVGG_EMULATE_CPU), or None: this machine's own."""
    name = os.environ.get(ENVIRONMENT) or None
    if name is not None and name not in QEMU_CPUS:
        raise EmulationError(f"{ENVIRONMENT}={name!r}: emulated CPUs are {', '.join(QEMU_CPUS)}")
    return name


def _command(cpu: str, *args: str) -> list[str]:
    return ["qemu-x86_64", "-cpu", QEMU_CPUS[cpu], sys.executable, "-m",
            "attnvgg_runtime.readers.emulated_reader", *args]


def _child_environment() -> dict[str, str]:  # the child is the emulated CPU: it emulates nothing
    return {k: v for k, v in os.environ.items() if k != ENVIRONMENT}


def emulated_probe_saturates(cpu: str) -> bool:
    result = subprocess.run(_command(cpu, "probe"), capture_output=True, text=True, timeout=600,
                            env=_child_environment())
    if result.returncode != 0:
        raise EmulationError(f"the saturation probe under qemu -cpu {cpu} failed (is qemu-user "
                             f"installed? apt-get install qemu-user): {result.stderr[-500:]}")
    return result.stdout.strip() == "1"


def write_array(stream, array: np.ndarray) -> None:
    """One .npy array onto a pipe (numpy's own reader and writer ask a pipe for its position)."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(stream, np.lib.format.header_data_from_array_1_0(array))
    stream.write(array.tobytes())
    stream.flush()


def read_array(stream) -> np.ndarray:
    np.lib.format.read_magic(stream)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    data = stream.read(int(np.prod(shape)) * dtype.itemsize)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


class EmulatedRunner:
    """A reader in a qemu child: batch in, outputs out, as OnnxRuntimeRunner / OpenVinoRunner."""

    def __init__(self, cpu: str, reader: str, path: str | Path, exact_int8: bool = False,
                 hint: str = "f32", optimization: str | None = None, convert: bool = False) -> None:
        args = [reader, str(path), "--hint", hint] + (["--exact-int8"] if exact_int8 else []) + (
            ["--optimization", optimization] if optimization else []) + (["--convert"] if convert else [])
        self.process = subprocess.Popen(_command(cpu, *args), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=_child_environment())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            write_array(self.process.stdin, batch)
            return read_array(self.process.stdout)
        except (OSError, EOFError, ValueError):
            self.process.kill()
            error = self.process.stderr.read().decode(errors="replace").strip()
            raise EmulationError(error.splitlines()[-1] if error else "the emulated reader died") from None

    def __del__(self) -> None:
        if getattr(self, "process", None) and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
