"""What kind of box this is, as far as the artifacts' numerics and speed are concerned: the CPU
and the ISA features its kernels choose by, whether its int8 products saturate (measured, not
guessed: attnvgg_runtime.readers.cpu), and the runtimes installed. The box class names the rows
of docs/edge.md's table of verified box classes."""

from __future__ import annotations

import importlib.util
import platform

from attnvgg_runtime.readers import reader_version
from attnvgg_runtime.readers.cpu import cpu_identity, int8_products_saturate

RUNTIME_PACKAGES = ("onnxruntime", "openvino", "tensorrt")


def box_class(machine: str, isa: list[str], saturate: bool | None) -> str:
    """x86 AVX2 (int8 pair sums saturate), x86 VNNI/AMX, ARM with or without dotprod (and fp16
    arithmetic, where ONNX Runtime computes an fp16 graph in fp16)."""
    if machine in ("x86_64", "AMD64"):
        if saturate:
            return "x86 AVX2 (no VNNI: int8 pair sums saturate)"
        return "x86 AMX" if "amx_int8" in isa else "x86 VNNI"
    if machine in ("aarch64", "arm64"):
        dot = "dotprod" if "asimddp" in isa else "no dotprod"
        half = ", fp16 arithmetic" if "asimdhp" in isa else ""
        return f"ARM ({dot}{half})"
    return machine or "unknown"


def class_of(cpu: dict, saturate: bool | None = None) -> str:
    """The box class of a recorded CPU (``cpu_identity``'s record, as parity.json and bench.json
    hold it): ARM where its flags are ARM's, else x86, saturating where it has no int8 dot product."""
    isa = cpu.get("isa", [])
    if {"asimddp", "asimdhp", "i8mm", "sve"} & set(isa) or "CPU part" in cpu.get("model", ""):
        return box_class("aarch64", isa, saturate)
    if saturate is None:
        saturate = not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(isa)
    return box_class("x86_64", isa, saturate)


def box_identity() -> dict:
    """This box: architecture, CPU (model, ISA flags, threads), int8 saturation, class, runtimes."""
    cpu = cpu_identity()
    machine = platform.machine()
    saturate = int8_products_saturate() if importlib.util.find_spec("onnxruntime") else None
    runtimes = {name: reader_version(name) for name in RUNTIME_PACKAGES
                if importlib.util.find_spec(name)}
    return {"machine": machine, "python": platform.python_version(), "cpu": cpu,
            "int8_products_saturate": saturate, "class": box_class(machine, cpu["isa"], saturate),
            "runtimes": runtimes}


def describe(box: dict) -> str:
    cpu = box["cpu"]
    int8 = {None: "not probed (no onnxruntime)", True: "saturate (no VNNI)", False: "exact"}
    return (f"{box['class']}: {cpu['model']}, {box['machine']}, {cpu['threads']} threads, ISA "
            f"{' '.join(cpu['isa']) or 'none listed'}; int8 pair sums "
            f"{int8[box['int8_products_saturate']]}; runtimes: "
            f"{', '.join(box['runtimes'].values()) or 'none installed'}")
