"""What the gate costs, before and after issue 34, measured in one run on one build:

    .venv/bin/python -m benchmarks.gate_cost build/se --baseline dcebaf1 --name gate-cost-zen5
    .venv/bin/python -m benchmarks.gate_cost --name gate-cost-zen5     # re-render the stored run

runs `attnvgg-export parity` on hard-linked copies of one build (artifacts are never written in
place: every write is a rename, so the copies cannot touch the build): the code at ``--baseline``
(a git worktree, on the same Python environment), then this tree's gate twice, the first run
computing eager's outputs (as `make engine`'s parity stage does) and the second reading them
back (`make parity` on a built build, CI's gate). Each run is its own process, timed by the wall
clock and measured by its peak resident memory (wait4's ru_maxrss: the process and anything it
waited for). The verdicts of the runs are compared reading by reading, and the held-out figures
side by side (the same images; only batch sizes differ, so float rounding).

Writes docs/runs/<name>/gate-cost.json and renders it into docs/toolchain.md between
`<!-- gate-cost:<name>:begin -->` and `<!-- gate-cost:<name>:end -->`; tests/test_figures.py
renders the block again from the stored run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnvgg_runtime.readers.cpu import cpu_identity
from benchmarks.figures import REPO, RUNS, replace_block

DOCUMENT = REPO / "docs" / "toolchain.md"
FIGURES = ("rel_l2", "rel_l2_image", "cosine")


def run_gate(build: Path, code: Path | None, label: str) -> dict:
    """`attnvgg-export parity` on ``build`` as a process of its own, with the package from
    ``code`` (a worktree) where given; its wall time, peak RSS and verdicts."""
    env = dict(os.environ)
    if code is not None:  # ahead of the editable install: the worktree's packages are imported
        env["PYTHONPATH"] = os.pathsep.join([str(code), str(code / "box")])
    log = build / f"gate-{label}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-m", "attnvgg_export", "parity", "--manifest",
                                  str(build / "manifest.json")], stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=code or REPO)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {label} gate failed on {build}; see {log}:\n{log.read_text()[-2000:]}")
    parity = json.loads((build / "parity.json").read_text())
    return {"label": label, "wall_s": round(wall, 1), "peak_rss_mib": usage.ru_maxrss // 1024,
            "passed": parity["passed"], "shapes": parity["shapes"],
            "readings": {f"{a['path']} [{a['reader']}]": {
                "passed": a["passed"] and not a["skipped"], "skipped": a["skipped"],
                "heldout": {k: a["cases"].get("heldout", {}).get(k) for k in FIGURES}}
                for a in parity["artifacts"]}}


def linked_copy(build: Path, into: Path) -> Path:
    """A copy of ``build`` whose files are hard links (no bytes copied)."""
    shutil.copytree(build, into, copy_function=os.link)
    return into


def measure(build: Path, baseline: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="gate-cost-") as tmp:
        worktree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), baseline],
                       check=True, capture_output=True)
        try:
            old = linked_copy(build, Path(tmp) / "old")
            new = linked_copy(build, Path(tmp) / "new")
            (new / "eager-references.npz").unlink(missing_ok=True)
            runs = [run_gate(old, worktree, "baseline"),
                    run_gate(new, None, "first run"),  # computes eager's outputs and keeps them
                    run_gate(new, None, "re-run")]  # reads them: `make parity` on a built build
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                           check=False, capture_output=True)
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    return {"build": str(build), "baseline": baseline, "code": revision, "cpu": cpu_identity(),
            "runs": runs}


def compare(result: dict) -> dict:
    """The new runs against the baseline: readings whose verdict differs, and the largest relative
    difference of a held-out figure."""
    base = result["runs"][0]["readings"]
    differing, largest = [], 0.0
    for run in result["runs"][1:]:
        for label, reading in run["readings"].items():
            old = base.get(label)
            if old is None or (old["passed"], old["skipped"]) != (reading["passed"], reading["skipped"]):
                differing.append(f"{run['label']}: {label}")
                continue
            for key in FIGURES:
                a, b = old["heldout"][key], reading["heldout"][key]
                if a is not None and b is not None and max(abs(a), abs(b)) > 0:
                    largest = max(largest, abs(a - b) / max(abs(a), abs(b)))
        differing += [f"{run['label']}: {label} missing" for label in base if label not in run["readings"]]
    return {"differing_verdicts": differing, "largest_heldout_relative_difference": largest}


def render(result: dict) -> str:
    base = result["runs"][0]
    cpu = result["cpu"]
    lines = [f"`python -m benchmarks.gate_cost` on {result['build']} (full size), {cpu['model']} "
             f"({', '.join(cpu['isa'])}, {cpu['threads']} threads); baseline {result['baseline']}, "
             f"this code {result['code']}:", "",
             "| gate | wall | peak RSS | wall / baseline | memory / baseline | shapes |",
             "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        memory = run["peak_rss_mib"]
        lines.append(f"| {run['label']} | {run['wall_s']:.1f} s | {memory / 1024:.2f} GiB | "
                     f"{run['wall_s'] / base['wall_s']:.2f} | {memory / base['peak_rss_mib']:.2f} | "
                     f"{', '.join(run['shapes'])} |")
    verdicts = compare(result)
    lines += ["", f"Verdicts: {len(base['readings'])} readings, "
              + ("the same in every run" if not verdicts["differing_verdicts"] else
                 "DIFFERENT: " + "; ".join(verdicts["differing_verdicts"]))
              + f"; held-out figures (rel L2, worst image, cosine) within "
              f"{verdicts['largest_heldout_relative_difference']:.1e} of the baseline's, relatively "
              f"(the same images in batches of another size)."]
    return "\n".join(lines) + "\n"


def render_into_document(name: str) -> None:
    result = json.loads((RUNS / name / "gate-cost.json").read_text())
    DOCUMENT.write_text(replace_block(DOCUMENT.read_text(), name, render(result), kind="gate-cost"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", nargs="?", type=Path, help="a full-size build (build/se)")
    parser.add_argument("--baseline", default="dcebaf1", help="the git revision to compare against")
    parser.add_argument("--name", required=True, help="the stored run's folder under docs/runs/")
    args = parser.parse_args()
    if args.build is not None:
        result = measure(args.build.resolve(), args.baseline)
        (RUNS / args.name).mkdir(parents=True, exist_ok=True)
        (RUNS / args.name / "gate-cost.json").write_text(json.dumps(result, indent=2) + "\n")
    render_into_document(args.name)
    print(render(json.loads((RUNS / args.name / "gate-cost.json").read_text())))


if __name__ == "__main__":
    main()
