"""What ARM's kernels compute against x86's, artifact by artifact, on the same golden images: each
reading's rel L2 against eager (the golden outputs), and the ARM reading against the x86 reading
of the same artifact under the same reader. Stored in docs/runs/<name>/ and rendered into
docs/precision.md ("ARM").

    # 1. on x86, natively (the toolchain's venv), and 2. on the emulated box (make test-arm set it up):
    .venv/bin/python benchmarks/arm_numerics.py read build/ci/se x86.npz
    PYTHONPATH=build/arm/site qemu-aarch64 -cpu neoverse-n1 -L build/arm/root \\
        build/arm/root/usr/bin/python3.11 benchmarks/arm_numerics.py read build/ci/se arm.npz
    # 3. compare, store and render:
    .venv/bin/python -m benchmarks.arm_numerics compare x86.npz arm.npz --name arm-numerics-neoverse-n1

Reading needs only attnvgg_runtime and numpy (it runs on the emulated box).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

IMAGES = 8  # the first batch of the held-out golden images at the opt size
PAIRS = [("model.onnx", "onnxruntime"), ("model.onnx", "openvino"),
         ("model.fp16.onnx", "onnxruntime"), ("model.fp16.onnx", "openvino"),
         ("model.int8-trt.onnx", "onnxruntime"), ("model.int8-trt.onnx", "openvino"),
         ("model.int8-cpu.onnx", "onnxruntime"), ("model.int8-cpu.onnx", "openvino"),
         ("engines/ort/model.int8-cpu.ort", "onnxruntime"), ("engines/openvino/model.int8.xml", "openvino")]


def read(build: Path, out: Path) -> None:
    from attnvgg_runtime.manifest import read_manifest
    from attnvgg_runtime.probe import box_identity
    from attnvgg_runtime.verify.golden import read_golden
    from attnvgg_runtime.verify.readers import runner_for

    manifest = read_manifest(build / "manifest.json")
    batches, reference = read_golden(build, manifest.golden)["heldout"]
    images = np.concatenate(batches)[:IMAGES]
    arrays = {"reference": reference[:IMAGES]}
    seconds = {}
    for path, reader in PAIRS:
        start = time.perf_counter()
        runner = runner_for(manifest.artifact(path), build, manifest, reader)
        arrays[f"{path}|{reader}"] = runner(images)
        seconds[f"{path}|{reader}"] = time.perf_counter() - start
        print(f"{path} [{reader}]: {seconds[f'{path}|{reader}']:.1f} s", flush=True)
    box = box_identity()
    np.savez(out, **arrays, meta=np.array(json.dumps({"box": box, "seconds": seconds})))


def compare(x86: Path, arm: Path) -> dict:
    a, b = np.load(x86), np.load(arm)
    reference = a["reference"]
    assert np.array_equal(reference, b["reference"]), "the two readings are of different golden I/O"

    def rel(u, v) -> float:
        return float(np.linalg.norm(u - v) / np.linalg.norm(v))

    rows = [{"artifact": key.split("|")[0], "reader": key.split("|")[1],
             "x86_vs_eager": rel(a[key], reference), "arm_vs_eager": rel(b[key], reference),
             "arm_vs_x86": rel(b[key], a[key])}
            for key in a.files if "|" in key and key in b.files]
    return {"x86": json.loads(str(a["meta"]))["box"], "arm": json.loads(str(b["meta"]))["box"],
            "arm_seconds": json.loads(str(b["meta"]))["seconds"], "images": int(len(reference)),
            "rows": rows}


def render(run: dict) -> str:
    lines = [f"ARM: {run['arm']['class']}, {run['arm']['cpu']['model']} under qemu-aarch64, "
             f"{', '.join(run['arm']['runtimes'].values())}; x86: {run['x86']['class']}, "
             f"{run['x86']['cpu']['model']}, {', '.join(run['x86']['runtimes'].values())}. "
             f"{run['images']} held-out golden images at the opt size.", "",
             "| artifact | reader | x86 vs eager | ARM vs eager | ARM vs x86 |", "|---|---|---|---|---|"]
    lines += [f"| {r['artifact']} | {r['reader']} | {r['x86_vs_eager']:.2e} | {r['arm_vs_eager']:.2e} | "
              f"{r['arm_vs_x86']:.2e} |" for r in run["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("read")
    r.add_argument("build", type=Path)
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("x86", type=Path)
    c.add_argument("arm", type=Path)
    c.add_argument("--name", required=True, help="docs/runs/<name>/ and the docs/precision.md block")
    args = parser.parse_args(argv)
    if args.command == "read":
        read(args.build, args.out)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.figures import REPO, RUNS, replace_block

    run = compare(args.x86, args.arm)
    stored = RUNS / args.name / "arm-numerics.json"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(run, indent=1) + "\n")
    doc = REPO / "docs" / "precision.md"
    doc.write_text(replace_block(doc.read_text(), args.name, render(run), kind="arm-numerics"))
    print(render(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
