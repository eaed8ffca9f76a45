"""The trained-fixture accuracy table (docs/precision.md): eager fp32, fp16, int8-trt and
int8-cpu top-1 on held-out digits, per variant and calibration method, each artifact's paired
drop against eager with its 95% interval (Tango's) and verdict against the gate's budget, and the
layers the fallback kept in float (by aim).

    .venv/bin/python -m benchmarks.precision_table --name precision-table-zen3   # run and store
    .venv/bin/python -m benchmarks.precision_table --name precision-table-zen3 --render

The first builds every fixture (about 10 minutes on 2 cores), stores the figures in
docs/runs/<name>/precision-table.json and rewrites the block between
`<!-- figures:<name>:begin -->` and `<!-- figures:<name>:end -->` in docs/precision.md; the
second re-renders that block from the stored run (tests/test_figures.py checks they agree).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from attnvgg_export import models
from attnvgg_export.graphs.export import ExportConfig, batch_range, export_to_folder, image_range
from attnvgg_export.graphs.precision import FallbackTargetError, PrecisionConfig, build_precision_graphs
from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_runtime.readers.cpu import cpu_identity
from attnvgg_runtime.verify.accuracy import drop_verdict

from . import digits
from .figures import REPO, RUNS, replace_block

ARTIFACTS = ("fp16-onnx", "int8-trt-onnx", "int8-cpu-onnx")
DOC = REPO / "docs" / "precision.md"
STORED = "precision-table.json"


def fixture_manifest(variant: str, root: Path, fixture: digits.TrainedFixture | None = None
                     ) -> tuple[Path, digits.TrainedFixture]:
    """The trained fixture of ``variant`` (trained now unless given), exported into
    ``root/variant``: (manifest, fixture)."""
    fixture = fixture or digits.train(variant)
    checkpoint = models.save_checkpoint(fixture.model, root / f"{variant}.pt", variant,
                                        digits.CLASSES, digits.WIDTH)
    config = ExportConfig(variant, num_classes=digits.CLASSES, model_width=digits.WIDTH,
                          checkpoint=checkpoint, batch=batch_range(1, 1, 8),
                          height=image_range("height", 32, 32, 32), width=image_range("width", 32, 32, 32))
    return export_to_folder(config, root / variant, log=lambda *_: None), fixture


def measure_row(manifest: dict, variant: str, method: str, missed: bool) -> dict:
    """One build's figures: accuracy of each artifact, its lost/gained images against eager,
    and the layers kept in float by each aim."""
    parity = manifest["parity"]["heldout-vs-eager"]
    fallback = manifest["calibration"]["fallback"]
    return {
        "variant": variant, "method": method, "images": parity["int8-cpu-onnx"]["images"],
        "eager": parity["eager-fp32"]["accuracy"], "missed": missed,
        "artifacts": {name: {k: parity[name][k] for k in ("accuracy", "lost", "gained")}
                      for name in ARTIFACTS},
        "kept_float": {target: [{"module": f["module"], "aim": f.get("aim", r["metric"])}
                                for f in r["fallen_back"]] for target, r in fallback.items()},
    }


def render(run: dict) -> str:
    """The Markdown block: one row per build, each artifact's top-1, drop and verdict."""
    lines = [
        f"Run `{run['name']}` ({run['date']}, {run['cpu']['model']}, "
        f"{', '.join(run['cpu']['isa'])}): `{run['command']}`. Fixtures' validation accuracy: "
        + ", ".join(f"{v} {f['validation_accuracy']:.3f} ({f['epochs']} epochs)"
                    for v, f in run["fixtures"].items())
        + f". Top-1 in % on {run['rows'][0]['images']} held-out digits; each artifact's paired "
        "drop against eager in points with its 95% interval (Tango's score interval), judged "
        "against the gate's "
        "budget (" + ", ".join(f"{k} {100 * v:.1f}" for k, v in run["budgets"].items())
        + " points): **W** within budget, **N** not resolvable with these images, **O** over "
        "budget. Layers kept in float: by the accuracy aim (a) and the rel-L2 aim (m).", "",
        "| variant | calibration | eager fp32 | " + " | ".join(ARTIFACTS)
        + " | layers in float (trt / cpu) |", "|---|---|---|" + "---|" * len(ARTIFACTS) + "---|"]
    marks = {"within budget": "W", "not resolvable": "N", "over budget": "O"}
    for row in run["rows"]:
        cells = []
        for name in ARTIFACTS:
            a = row["artifacts"][name]
            budget = run["budgets"]["fp16" if name.startswith("fp16") else "int8"]
            v = drop_verdict(a["lost"], a["gained"], row["images"], budget)
            cells.append(f"{100 * a['accuracy']:.2f}, {100 * v['drop']:+.2f} "
                         f"[{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] **{marks[v['verdict']]}**")
        kept = " / ".join(
            ", ".join(f"{f['module']} ({'a' if f['aim'] == 'accuracy' else 'm'})"
                      for f in row["kept_float"][t]) or "-" for t in ("int8-trt", "int8-cpu"))
        missed = " (fallback target missed)" if row["missed"] else ""
        lines.append(f"| {row['variant']} | {row['method']} | {100 * row['eager']:.2f} | "
                     + " | ".join(cells) + f" | {kept}{missed} |")
    return "\n".join(lines) + "\n"


def run_table(variants: list[str], methods: list[str], root: Path) -> dict:
    npz = digits.write_unseen_npz(root / "digits-unseen.npz")
    rows, fixtures = [], {}
    for variant in variants:
        start = time.perf_counter()
        manifest_path, fixture = fixture_manifest(variant, root)
        fixtures[variant] = {"validation_accuracy": fixture.validation_accuracy, "epochs": fixture.epochs}
        for method in methods:
            try:
                build_precision_graphs(manifest_path, PrecisionConfig(
                    calib_source=str(npz), method=method, **digits.UNSEEN_SPLIT), log=lambda *_: None)
                missed = False
            except FallbackTargetError:  # the graphs and manifest are written; the row says so
                missed = True
            rows.append(measure_row(json.loads(manifest_path.read_text()), variant, method, missed))
            print(json.dumps(rows[-1]), flush=True)
        print(f"{variant}: {time.perf_counter() - start:.0f} s", flush=True)
    tolerances = load_tolerances(variants[0])
    return {"rows": rows, "fixtures": fixtures, "cpu": cpu_identity(),
            "date": datetime.date.today().isoformat(),
            "budgets": {p: tolerances[p]["accuracy_drop_max"] for p in ("fp16", "int8")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the stored run, docs/runs/<name>/")
    parser.add_argument("--render", action="store_true", help="re-render the stored run only")
    parser.add_argument("--variants", nargs="+", default=["se", "vgg16", "la", "sa"])
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"])
    parser.add_argument("--out", default=None, help="build folder (default: a temporary one)")
    args = parser.parse_args()
    stored = RUNS / args.name / STORED
    if not args.render:
        root = Path(args.out or tempfile.mkdtemp(prefix="digits-"))
        root.mkdir(parents=True, exist_ok=True)
        run = run_table(args.variants, args.methods, root)
        run |= {"name": args.name,
                "command": " ".join(["python -m benchmarks.precision_table", *sys.argv[1:]])}
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(run, indent=1) + "\n")
    DOC.write_text(replace_block(DOC.read_text(), args.name, render(json.loads(stored.read_text()))))
    print(f"rendered {stored} into {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
