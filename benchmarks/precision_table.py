"""The trained-fixture accuracy table (docs/precision.md): eager fp32, fp16, int8-trt and
int8-cpu accuracy on held-out digits, per calibration method.

    .venv/bin/python -m benchmarks.precision_table [--variants se vgg16 la sa] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import models
from exporter.graphs.export import ExportConfig, batch_range, export_to_folder, image_range
from exporter.graphs.precision import FallbackTargetError, PrecisionConfig, build_precision_graphs

from . import digits

COLUMNS = ("eager-fp32", "fp16-onnx", "int8-trt-onnx", "int8-cpu-onnx")


def fixture_manifest(variant: str, root: Path) -> tuple[Path, digits.TrainedFixture]:
    """The trained fixture of ``variant``, exported into ``root/variant``: (manifest, fixture)."""
    fixture = digits.train(variant)
    checkpoint = models.save_checkpoint(fixture.model, root / f"{variant}.pt", variant,
                                        digits.CLASSES, digits.WIDTH)
    config = ExportConfig(variant, num_classes=digits.CLASSES, model_width=digits.WIDTH,
                          checkpoint=checkpoint, batch=batch_range(1, 1, 8),
                          height=image_range("height", 32, 32, 32), width=image_range("width", 32, 32, 32))
    return export_to_folder(config, root / variant, log=lambda *_: None), fixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=["se", "vgg16", "la", "sa"])
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="digits-"))
    root.mkdir(parents=True, exist_ok=True)
    npz = digits.write_unseen_npz(root / "digits-unseen.npz")
    print("| variant | calibration | " + " | ".join(COLUMNS)
          + " | int8 gap (trt / cpu) | int8 top-1 agreement (trt / cpu) | layers kept float |")
    print("|---|---|" + "---|" * len(COLUMNS) + "---|---|---|")
    for variant in args.variants:
        start = time.perf_counter()
        manifest_path, fixture = fixture_manifest(variant, root)
        print(f"<!-- {variant}: validation accuracy {fixture.validation_accuracy:.3f} after "
              f"{fixture.epochs} epochs -->", flush=True)
        for method in args.methods:
            try:
                build_precision_graphs(manifest_path, PrecisionConfig(
                    calib_source=str(npz), method=method, **digits.UNSEEN_SPLIT),
                    log=lambda *_: None)
                missed = ""
            except FallbackTargetError:  # the graphs and manifest are written; the row says so
                missed = " (fallback target missed)"
            manifest = json.loads(manifest_path.read_text())
            parity = manifest["parity"]["heldout-vs-eager"]
            acc = {c: 100 * parity[c]["accuracy"] for c in COLUMNS}
            gaps = [acc["eager-fp32"] - acc[c] for c in ("int8-trt-onnx", "int8-cpu-onnx")]
            fallback = manifest["calibration"]["fallback"]
            kept = " / ".join(str(len(fallback[t]["fallen_back"])) for t in ("int8-trt", "int8-cpu"))
            agree = " / ".join(f"{100 * parity[c]['top1_agreement']:.2f}"
                               for c in ("int8-trt-onnx", "int8-cpu-onnx"))
            print(f"| {variant} | {method} | " + " | ".join(f"{acc[c]:.2f}" for c in COLUMNS)
                  + f" | {gaps[0]:+.2f} / {gaps[1]:+.2f} | {agree} | {kept}{missed} |", flush=True)
        print(f"<!-- {variant}: {time.perf_counter() - start:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
