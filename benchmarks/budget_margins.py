"""The budgets that hold artifacts to each other, with what each measured on every build and CPU
that ran the gate, and the margin left (budget / worst figure): the table in docs/precision.md,
"Budgets and their margins", rendered from stored parity.json files, never typed.

    .venv/bin/python -m benchmarks.budget_margins \\
        --run "full size, Zen 4=build/se/parity.json" --run "reduced CI, Zen 4=build/ci/se/parity.json" \\
        --run "reduced CI, qemu Haswell=build/ci-Haswell/se/parity.json"
    .venv/bin/python -m benchmarks.budget_margins --render   # again from docs/runs/budget-margins/

Each run's parity.json is copied into docs/runs/budget-margins/ (runs.json names them), the
evidence of CPUs this machine cannot run (../shared/evidence/) among them. Figures are taken
from the measures every parity.json has (the cases' rel L2, rel_l2_between_readers,
rel_l2_vs_reconverted), so that a run made before a check existed still shows what it measured.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from exporter.verify.budgets import load_tolerances

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "docs" / "runs" / "budget-margins"
DOC = REPO / "docs" / "precision.md"
CONVERTED = ("engines/ort/", "engines/openvino/", "engines/trt/")


def _heldout(parity: dict) -> list[tuple[dict, dict]]:
    return [(a, a["cases"]["heldout"]) for a in parity["artifacts"]
            if not a.get("skipped") and "heldout" in a.get("cases", {})]


def figures(parity: dict) -> dict[str, float | None]:
    """The worst figure of each budgeted check in one gate run (None: not measured there)."""
    read = _heldout(parity)

    def worst(values):
        values = [v for v in values if v is not None]
        return max(values) if values else None

    agreement = {p: worst(h.get("rel_l2_between_readers") for a, h in read
                          if a["precision"] == p and a["path"].endswith(".onnx"))
                 for p in ("fp32", "fp16")}
    int8_ratio = []
    for path in {a["path"] for a, _ in read if a["precision"] == "int8" and a["path"].endswith(".onnx")}:
        pair = [h for a, h in read if a["path"] == path and "rel_l2_between_readers" in h]
        if len(pair) == 2 and min(h["rel_l2"] for h in pair) > 0:
            int8_ratio.append(pair[0]["rel_l2_between_readers"] / min(h["rel_l2"] for h in pair))
    sources = {(a["path"], a["reader"]): h for a, h in read}
    excess = []
    for a, h in read:
        if not a["path"].startswith(CONVERTED) or a["precision"] != "int8":
            continue
        graph = "model.int8-trt.onnx" if a["path"].endswith(".plan") else "model.int8-cpu.onnx"
        source = sources.get((graph, "onnxruntime" if a["reader"] == "tensorrt" else a["reader"]))
        if source:
            excess += [(h[k] - source[k]) / source[k] for k in ("rel_l2", "rel_l2_image")]
    return {"fp32 agreement_max": agreement["fp32"], "fp16 agreement_max": agreement["fp16"],
            "int8 agreement_factor": worst(int8_ratio),
            "derived_max (all)": worst(h.get("rel_l2_vs_reconverted") for _, h in read),
            "int8 derived_excess_max": worst(excess),
            "int8 rel_l2_max (against eager)": worst(h["rel_l2"] for a, h in read
                                                     if a["precision"] == "int8")}


def budget_values() -> dict[str, float]:
    b = load_tolerances("se")
    return {"fp32 agreement_max": b["fp32"]["agreement_max"],
            "fp16 agreement_max": b["fp16"]["agreement_max"],
            "int8 agreement_factor": b["int8"]["agreement_factor"],
            "derived_max (all)": b["int8"]["derived_max"],
            "int8 derived_excess_max": b["int8"]["derived_excess_max"],
            "int8 rel_l2_max (against eager)": b["int8"]["rel_l2_max"]}


def render(runs: dict[str, dict]) -> str:
    budgets = budget_values()
    measured = {label: figures(parity) for label, parity in runs.items()}
    lines = ["| budget | value | " + " | ".join(runs) + " | margin (worst) |",
             "|---|---|" + "---|" * len(runs) + "---|"]
    for key, value in budgets.items():
        row = [measured[label][key] for label in runs]
        cells = ["n/a" if v is None else f"{v:.3g}" for v in row]
        known = [v for v in row if v is not None]
        top = max(known, default=None)
        margin = ("n/a" if top is None else "exact (0 measured)" if top <= 0 else f"{value / top:.3g}")
        lines.append(f"| {key} | {value:g} | " + " | ".join(cells) + f" | {margin} |")
    cpus = "; ".join(f"{label}: {p['cpu']['model']} ({', '.join(p['cpu']['isa'])})"
                     + (f", emulated {p['emulated_cpu']}" if p.get("emulated_cpu") else "")
                     for label, p in runs.items())
    return ("\n".join(lines) + "\n\nFigures: the worst over the artifacts of each run (int8 agreement as "
            "a multiple of the smaller reader's error against eager; excess as a fraction of the "
            "source's error, aggregate and worst image). n/a: not measured in that run. CPUs: "
            f"{cpus}. Files: [docs/runs/budget-margins/](runs/budget-margins/).")


def write(text: str) -> None:
    doc = DOC.read_text()
    pattern = re.compile(r"(<!-- budget-margins:begin -->\n)(?:.*?\n)?(<!-- budget-margins:end -->)", re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC} has no <!-- budget-margins:begin/end --> block")
    DOC.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc))


def stored_runs() -> dict[str, dict]:
    names = json.loads((STORE / "runs.json").read_text())
    return {label: json.loads((STORE / name).read_text()) for label, name in names.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=PARITY_JSON")
    parser.add_argument("--render", action="store_true", help="re-render from the stored runs")
    args = parser.parse_args()
    if not args.render:
        STORE.mkdir(parents=True, exist_ok=True)
        names = {}
        for item in args.run:
            label, path = item.split("=", 1)
            name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".json"
            shutil.copyfile(path, STORE / name)
            names[label] = name
        (STORE / "runs.json").write_text(json.dumps(names, indent=2) + "\n")
    write(render(stored_runs()))
    print(render(stored_runs()))


if __name__ == "__main__":
    main()
