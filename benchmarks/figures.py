"""The README's and docs' figures, generated from one named run instead of copied by hand.

    .venv/bin/python -m benchmarks.figures build/se --name se-full-zen5   # after make engine
    .venv/bin/python -m benchmarks.figures --name se-full-zen5   # re-render from the stored run

copies the run's bench.json, parity.json and the manifest's stage timings into
docs/runs/<name>/, and rewrites the blocks between `<!-- figures:<name>:begin -->` and
`<!-- figures:<name>:end -->` in README.md with tables rendered from those files. A test renders
them again from docs/runs/<name>/ and checks README.md still says exactly that.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from exporter.report.report import describe_limits, format_accuracy, format_bench, format_recommendation

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs" / "runs"


def _parity_table(parity: dict) -> str:
    lines = ["| artifact | reader | worst rel L2 | min cosine | verdict |", "|---|---|---|---|---|"]
    for a in parity["artifacts"]:
        if a["skipped"]:
            lines.append(f"| {a['path']} | {a['reader']} | | | not verified: {a['skipped']} |")
            continue
        gated = [c for c in a["cases"].values() if c.get("gated", True)]  # as the gate judged
        worst = max(c["rel_l2"] for c in gated)
        cosine = min(c["cosine"] for c in gated)
        lines.append(f"| {a['path']} | {a['reader']} | {worst:.2e} | {cosine:.5f} | "
                     f"{'ok' if a['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def _has_ungated(parity: dict) -> bool:
    return any(not c.get("gated", True) for a in parity["artifacts"] for c in a["cases"].values())


def render(run: Path) -> str:
    """The Markdown block for one run folder (bench.json, parity.json, stages.json)."""
    bench = json.loads((run / "bench.json").read_text())
    parity = json.loads((run / "parity.json").read_text())
    stages = json.loads((run / "stages.json").read_text())
    timing = "; ".join(f"{stage}: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
                       for stage, t in stages["timings_s"].items())
    memory = ", ".join(f"{k} {v} MiB" for k, v in stages["peak_rss_mib"].items())
    return "\n".join([
        f"Run `{run.name}`: {stages['description']}. Files: [docs/runs/{run.name}/]"
        f"(docs/runs/{run.name}/).", "",
        format_bench(bench), "", describe_limits(bench), "", format_recommendation(bench), "",
        f"Gate: **{'passed' if parity['passed'] else 'FAILED'}** on {parity['heldout']['images']} "
        f"held-out images and shapes {', '.join(parity['shapes'][1:])}"
        + (" (int8 gated where every side is at least 64 px; its thin corners are in parity.json)"
           if _has_ungated(parity) else "") + ".", "",
        _parity_table(parity), "",
        *([*format_accuracy(parity), ""] if parity.get("evaluation") else []),
        f"Stage times: {timing}. Peak memory: {memory}.", ""])


def replace_block(text: str, name: str, block: str) -> str:
    pattern = re.compile(rf"(<!-- figures:{re.escape(name)}:begin -->\n).*?(<!-- figures:"
                         rf"{re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- figures:{name}:begin/end --> block to render {name} into")
    return pattern.sub(lambda m: m.group(1) + block + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, nargs="?",
                        help="a build folder, e.g. build/se (none: re-render the stored run)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", help="what, where, which command (with a build)")
    args = parser.parse_args()
    run = RUNS / args.name
    readme = REPO / "README.md"
    if args.build is None:  # the renderer changed, the run did not
        readme.write_text(replace_block(readme.read_text(), args.name, render(run)))
        print(f"re-rendered the README block {args.name} from {run}")
        return
    if not args.description:
        parser.error("--description is required with a build folder")
    run.mkdir(parents=True, exist_ok=True)
    for name in ("bench.json", "parity.json"):
        shutil.copyfile(args.build / name, run / name)
    manifest = json.loads((args.build / "manifest.json").read_text())
    stages = {"description": args.description,
              "timings_s": {"export": manifest["export"]["timings_s"],
                            "precision": manifest["calibration"]["timings_s"]},
              "peak_rss_mib": {"export": manifest["export"]["peak_rss_mib"],
                               "precision": manifest["calibration"]["peak_rss_mib"]}}
    (run / "stages.json").write_text(json.dumps(stages, indent=2) + "\n")
    readme.write_text(replace_block(readme.read_text(), args.name, render(run)))
    print(f"wrote {run} and the README block {args.name}")


if __name__ == "__main__":
    main()
