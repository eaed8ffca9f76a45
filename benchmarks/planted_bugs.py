"""The planted bugs of the accuracy tests, measured at several sizes on this CPU: the verdict each
size gets and its margin, so that a test's bug is sized to give its verdict on every CPU with a
margin of at least 2, not just on the machine that wrote the test.

    .venv/bin/python -m benchmarks.planted_bugs --out build/planted-bugs
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m benchmarks.planted_bugs ...
    ATTNVGG_EMULATE_CPU=Haswell .venv/bin/python -m benchmarks.planted_bugs --only eval ...

On the shipped digits fixture (benchmarks.digits.shipped_fixture), its build as the tests make it:
- ``eval``: a share of ``features.12``'s per-channel weight scales zeroed in the int8-cpu graph,
  gated on the 600 unseen digits as EVAL_DIR (tests/verify/test_accuracy.py); margin: the drop's
  lower bound over the budget. Its readers follow ATTNVGG_EMULATE_CPU (qemu).
- ``clip``: the calibration range at the input of ``features.28`` scaled down, the precision stage
  rebuilt with a loose rel-L2 aim (tests/graphs/test_precision.py); margins: the held-out drop's
  lower bound over the budget without the accuracy aim, the tuning drop's with it, the clipped
  layer's share of the drop over 0.5, and the budget over the confirmed drop's upper bound. The
  precision stage reads natively (it has no emulated reader).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from attnvgg_export.graphs.precision import PrecisionConfig, build_precision_graphs
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_runtime.readers.cpu import cpu_identity
from attnvgg_runtime.verify.accuracy import drop_verdict
from benchmarks import digits
from benchmarks.precision_table import fixture_manifest


def zero_channels(root: Path, layer: str, fraction: float) -> None:
    """int8-cpu graph: ``fraction`` of ``layer``'s per-channel weight scales set to 0 (seeded),
    the manifest rehashed as a careless rebuild would."""
    import onnx
    from onnx import numpy_helper

    from attnvgg_runtime.manifest import read_manifest, sha256_file, write_manifest

    path = root / "model.int8-cpu.onnx"
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0].startswith(f"{layer}.weight"))
    tensor = next(i for i in model.graph.initializer if i.name == node.input[1])
    scales = numpy_helper.to_array(tensor).copy()
    scales[np.random.default_rng(0).random(scales.shape) < fraction] = 0
    tensor.CopyFrom(numpy_helper.from_array(scales, tensor.name))
    onnx.save(model, str(path))
    manifest = read_manifest(root / "manifest.json")
    entry = manifest.artifact("model.int8-cpu.onnx")
    entry.sha256, entry.bytes = sha256_file(path), path.stat().st_size
    write_manifest(root / "manifest.json", manifest)


def scale_range(root: Path, tensor: str, factor: float) -> None:
    """Scale one tensor's cached calibration range: its int8 graphs clip there."""
    (cache,) = (root / "calib").glob("*.json")
    ranges = json.loads(cache.read_text())
    for key in ("lowest", "highest"):
        value = ranges["data"][tensor][key]
        if isinstance(value, dict):
            value["data"] *= factor
        else:
            ranges["data"][tensor][key] = value * factor
    cache.write_text(json.dumps(ranges))


def build(out: Path) -> tuple[Path, PrecisionConfig]:
    manifest, _ = fixture_manifest("se", out, digits.shipped_fixture())
    npz = digits.write_unseen_npz(out / "digits-unseen.npz")
    config = PrecisionConfig(calib_source=str(npz), **digits.UNSEEN_SPLIT)
    build_precision_graphs(manifest, config, log=lambda *_: None)
    return manifest, config


def measure_eval(manifest: Path, out: Path, fractions: list[float], budget: float) -> list[dict]:
    from attnvgg_export.verify.gate import run_parity

    pixels, labels = digits.digit_images()
    unseen = out / "eval-600.npz"
    np.savez(unseen, images=pixels[digits.UNSEEN_START:], labels=labels[digits.UNSEEN_START:])
    rows = []
    for fraction in fractions:
        root = out / f"zero-{fraction}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(manifest.parent, root)
        zero_channels(root, "features.12", fraction)
        report = run_parity(root / "manifest.json", log=lambda *_: None, only={"model.int8-cpu.onnx"},
                            eval_dir=unseen)
        for entry in report.artifacts:
            if entry.accuracy:
                a = entry.accuracy
                rows.append({"bug": f"features.12 scales zeroed: {fraction}", "reader": entry.reader,
                             "images": a["images"], "lost": a["lost"], "gained": a["gained"],
                             "drop": a["drop"], "low": a["low"], "high": a["high"],
                             "verdict": a["verdict"], "fails": a["fails"], "method": a["method"],
                             "margin": a["low"] / budget})
    return rows


def measure_clip(manifest: Path, config: PrecisionConfig, out: Path, factors: list[float],
                 budget: float) -> list[dict]:
    rows = []
    loose = replace(config, margin_target=0.01)
    for factor in factors:
        root = out / f"clip-{factor}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(manifest.parent, root)
        scale_range(root, "max_pool2d_3", factor)
        build_precision_graphs(root / "manifest.json", replace(loose, accuracy_aim=False),
                               log=lambda *_: None)
        plain = json.loads((root / "manifest.json").read_text())
        build_precision_graphs(root / "manifest.json", loose, log=lambda *_: None)
        aimed = json.loads((root / "manifest.json").read_text())
        for target in ("int8-trt", "int8-cpu"):
            held = plain["parity"]["heldout-vs-eager"][f"{target}-onnx"]
            heldout = drop_verdict(held["lost"], held["gained"], held["images"], budget)
            record = aimed["calibration"]["fallback"][target]
            accuracy = record["accuracy"]
            tuning = drop_verdict(accuracy["initial"]["lost"], accuracy["initial"]["gained"],
                                  accuracy["images"], budget)
            top = accuracy["shares"][0] if accuracy["shares"] else {"module": None, "share": 0.0}
            confirmed = accuracy.get("confirmed") or {}
            rows.append({
                "bug": f"range at max_pool2d_3 x{factor}", "graph": target, "heldout": held,
                "method": heldout["method"], "confirmed_counts": confirmed,
                "heldout_without_aim": heldout["verdict"], "heldout_margin": heldout["low"] / budget,
                "tuning": tuning["verdict"], "tuning_margin": tuning["low"] / budget,
                "kept": [f["module"] for f in record["fallen_back"]], "first_share": top["module"],
                "share_margin": top["share"] / 0.5, "confirmed": confirmed.get("verdict"),
                "confirmed_margin": (budget / confirmed["high"] if confirmed.get("high", 0) > 0
                                     else None) if confirmed else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=("eval", "clip"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.875])
    parser.add_argument("--factors", type=float, nargs="+", default=[0.1, 0.03])
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    budget = load_tolerances("se")["int8"]["accuracy_drop_max"]
    manifest, config = build(args.out)
    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    result = {"cpu": cpu_identity() | ({"caps": caps} if caps else {}), "budget": budget}
    if args.only != "clip":
        result["eval"] = measure_eval(manifest, args.out, args.fractions, budget)
    if args.only != "eval":
        result["clip"] = measure_clip(manifest, config, args.out, args.factors, budget)
    (args.out / "planted-bugs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
