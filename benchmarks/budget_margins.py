"""Every budget in attnvgg_export/verify/tolerances.toml, with the worst figure each stored gate run
measured against it and the margin left (allowed / measured): the table in docs/precision.md,
"Budgets and their margins", rendered from stored parity.json files, never typed.

    .venv/bin/python -m benchmarks.budget_margins \\
        --run "full size, Zen 4=build/se/parity.json" --run "reduced CI, Zen 4=build/ci/se/parity.json"
    .venv/bin/python -m benchmarks.budget_margins --add "sa reduced, Zen 5=build/ci-sa/sa/parity.json"
    .venv/bin/python -m benchmarks.budget_margins --render   # again from docs/runs/budget-margins/

Each run's parity.json is copied into docs/runs/budget-margins/ (runs.json names them), the
evidence of CPUs this machine cannot run (../shared/evidence/) among them. Every figure is a pair
(measured, allowed) under today's budgets (a run made before a budget changed is judged by the
new one), taken from the measures every parity.json has (the cases' measures,
rel_l2_between_readers, rel_l2_vs_reconverted) or from a check's own record (`checks`: drift, and
the converted files' excess over their source), so that a run made before a check existed still
shows what it measured. Errors are measured as they are budgeted: rel L2 as is, cosine and top-k
agreement as 1 - value, int8 reader agreement as a multiple of the smaller reader's own error.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from attnvgg_export.verify.budgets import load_tolerances
from attnvgg_runtime.verify.budgets import DRIFT_FLOOR, agreement_gated

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "docs" / "runs" / "budget-margins"
DOC = REPO / "docs" / "precision.md"
CONVERTED = ("engines/ort/", "engines/openvino/", "engines/trt/")
AGREEMENT = ("cosine_min", "top1_min", "top5_min")  # budgeted as 1 - value
# the budgets against eager: their margin is the artifact's own error, which the layer fallback
# aims at 1.2 times over for int8; the others hold an artifact to another reading of it
AGAINST_EAGER = ("rel_l2_max", "rel_l2_image_max", "cosine_min", "top1_min", "top5_min",
                 "accuracy_drop_max")


def _pairs(parity: dict, budgets: dict) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(precision, budget key) -> every (measured, allowed) pair this run holds."""
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    trained = parity.get("trained_weights", False)

    def add(precision: str, key: str, measured: float, allowed: float) -> None:
        found.setdefault((precision, key), []).append((measured, allowed))

    read = [a for a in parity["artifacts"] if not a.get("skipped")]
    heldout = {(a["path"], a["reader"]): a["cases"]["heldout"] for a in read if "heldout" in a["cases"]}
    for a in read:
        p, budget = a["precision"], budgets.get(a["precision"], {})
        for case in a["cases"].values():
            if not case.get("gated", True) or not case.get("finite", True):
                continue
            for key, value in (("rel_l2_max", case["rel_l2"]), ("rel_l2_image_max", case.get("rel_l2_image")),
                               ("cosine_min", 1 - case["cosine"])):
                if key in budget and value is not None:
                    add(p, key, value, budget[key] if key not in AGREEMENT else 1 - budget[key])
            for key in ("top1_min", "top5_min"):
                if trained and key in budget and agreement_gated(key, case, budget):
                    add(p, key, 1 - case[key.split("_")[0]], 1 - budget[key])
            if "lost" in case and "accuracy_drop_max" in budget:
                add(p, "accuracy_drop_max", (case["lost"] - case["gained"]) / case["images"],
                    budget["accuracy_drop_max"])
        if a.get("accuracy") and "accuracy_drop_max" in budget:  # EVAL_DIR
            add(p, "accuracy_drop_max", a["accuracy"]["drop"], budget["accuracy_drop_max"])
        h = a["cases"].get("heldout", {})
        # a camera-frame artifact against the artifact it wraps is held to frame_max
        reconverted = "frame_max" if "the frame's preprocessing" in a.get("checks", {}) else "derived_max"
        if "rel_l2_vs_reconverted" in h and reconverted in budget:
            add(p, reconverted, h["rel_l2_vs_reconverted"], budget[reconverted])
        drift = a.get("checks", {}).get("drift from the build's figure")
        if drift and "drift_max" in budget:
            add(p, "drift_max", drift["measured"], drift["allowed"])
        if "rel_l2_between_readers" in h and a["path"].endswith(".onnx") and a["reader"] == "onnxruntime":
            if "agreement_factor" in budget:
                pair = [h2 for k, h2 in heldout.items()
                        if k[0] == a["path"] and "rel_l2_between_readers" in h2]
                own = min(x["rel_l2"] for x in pair)
                if own > 0:
                    add(p, "agreement_factor", h["rel_l2_between_readers"] / own, budget["agreement_factor"])
            elif "agreement_max" in budget:
                add(p, "agreement_max", h["rel_l2_between_readers"], budget["agreement_max"])
        converted = a["path"].startswith(CONVERTED) and not a["path"].endswith(".plan")
        if converted and "derived_excess_max" in budget and h:
            source = heldout.get((_source_of(a), a["reader"]))  # same reader and precision only
            same = any(s["path"] == _source_of(a) and s["precision"] == p for s in read)
            if source and same:
                for key in ("rel_l2", "rel_l2_image"):
                    add(p, "derived_excess_max", h[key] - source[key],
                        budget["derived_excess_max"] * source[key] + DRIFT_FLOOR)
    return found


def _source_of(artifact: dict) -> str:
    """The graph a converted file was made from, by its name (parity.json does not record it)."""
    name = artifact["path"].rsplit("/", 1)[1]
    return "model.int8-cpu.onnx" if "int8" in name else "model.onnx"


def _margin(measured: float, allowed: float) -> float:
    if measured <= 0:
        return float("inf")
    return allowed / measured


def rows(runs: dict[str, dict]) -> list[dict]:
    """One row per budget of tolerances.toml (the sa variant's overrides as rows of their own,
    measured on sa builds; the rest on se builds): its value, its worst (measured, allowed) over
    the runs and where, the margin."""
    table = []
    variants = {"se": "", "sa": "sa "}
    for variant, prefix in variants.items():
        budgets = load_tolerances(variant)
        default = load_tolerances("se")
        for precision, budget in budgets.items():
            for key, value in budget.items():
                if variant != "se" and default.get(precision, {}).get(key) == value:
                    continue  # the same budget as every variant's: measured in the rows above
                pairs = []
                for label, parity in runs.items():
                    if parity.get("variant", "se") != variant:  # each variant's builds its rows
                        continue
                    pairs += [(m, a, label) for m, a in _pairs(parity, budgets).get((precision, key), [])]
                worst = min(pairs, key=lambda t: _margin(t[0], t[1]), default=None)
                table.append({"budget": f"{prefix}{precision} {key}", "value": value, "worst": worst,
                              "runs": len({t[2] for t in pairs}),
                              "margin": None if worst is None else _margin(worst[0], worst[1]),
                              "against_eager": key in AGAINST_EAGER})
    return table


def render(runs: dict[str, dict]) -> str:
    lines = ["| budget | value | worst measured / allowed | in | runs | margin |",
             "|---|---|---|---|---|---|"]
    for row in rows(runs):
        worst = row["worst"]
        if worst is None:
            lines.append(f"| {row['budget']} | {row['value']:g} | not measured | | 0 | n/a |")
            continue
        margin = "exact (0 measured)" if row["margin"] == float("inf") else f"{row['margin']:.3g}"
        lines.append(f"| {row['budget']} | {row['value']:g} | {worst[0]:.3g} / {worst[1]:.3g} | "
                     f"{worst[2]} | {row['runs']} | {margin} |")
    cpus = "; ".join(f"{label}: {p['cpu']['model']} ({', '.join(p['cpu']['isa'])})"
                     + (f", emulated {p['emulated_cpu']}" if p.get("emulated_cpu") else "")
                     for label, p in runs.items())
    return ("\n".join(lines) + "\n\nMeasured as budgeted: rel L2 as is; cosine, top-1 and top-5 as 1 - "
            "value; int8 reader agreement as a multiple of the smaller reader's own error; a converted "
            "file's excess over its source's error and drift over the build's figure in rel L2, "
            "against their allowed excess (budget x the source's or build's figure + 1e-4); the "
            "accuracy drop as its point estimate. Margin: allowed / measured, the worst over every "
            "artifact, case and run (top-1/top-5 only where trained weights and images enough gate "
            f"them). Runs ({len(runs)}): {cpus}. Files: [docs/runs/budget-margins/](runs/budget-margins/).")


def write(text: str) -> None:
    doc = DOC.read_text()
    pattern = re.compile(r"(<!-- budget-margins:begin -->\n)(?:.*?\n)?(<!-- budget-margins:end -->)", re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC} has no <!-- budget-margins:begin/end --> block")
    DOC.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), doc))


def stored_runs() -> dict[str, dict]:
    names = json.loads((STORE / "runs.json").read_text())
    return {label: json.loads((STORE / name).read_text()) for label, name in names.items()}


def _store(items: list[str], names: dict[str, str]) -> dict[str, str]:
    for item in items:
        label, path = item.split("=", 1)
        name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".json"
        shutil.copyfile(path, STORE / name)
        names[label] = name
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="LABEL=PARITY_JSON",
                        help="store these runs instead of the stored ones")
    parser.add_argument("--add", action="append", default=[], metavar="LABEL=PARITY_JSON",
                        help="store these runs beside the stored ones")
    parser.add_argument("--render", action="store_true", help="re-render from the stored runs")
    args = parser.parse_args()
    if args.run or args.add:
        STORE.mkdir(parents=True, exist_ok=True)
        names = {} if args.run else json.loads((STORE / "runs.json").read_text())
        names = _store(args.run + args.add, names)
        (STORE / "runs.json").write_text(json.dumps(names, indent=2) + "\n")
    write(render(stored_runs()))
    print(render(stored_runs()))


if __name__ == "__main__":
    main()
