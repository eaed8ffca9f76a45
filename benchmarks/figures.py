"""The README's and docs' figures, generated from one named run instead of copied by hand.

    .venv/bin/python -m benchmarks.figures build/se --name se-full-zen5   # after make engine
    .venv/bin/python -m benchmarks.figures --name se-full-zen5   # re-render from the stored run

copies the run's bench.json, parity.json and the manifest's stage timings into
docs/runs/<name>/, and rewrites the blocks between `<!-- figures:<name>:begin -->` and
`<!-- figures:<name>:end -->` in README.md or docs/toolchain.md (FIGURE_DOCUMENTS; links
relative to the document) with tables rendered from those files. A test renders them again from
docs/runs/<name>/ and checks the documents still say exactly that.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from attnvgg_export.report.report import describe_limits, format_accuracy, format_bench, format_recommendation

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "docs" / "runs"
FIGURE_DOCUMENTS = (REPO / "README.md", REPO / "docs" / "toolchain.md")


def runs_link(document: Path) -> str:
    """docs/runs/ as a link from ``document``."""
    return "runs/" if document.parent == REPO / "docs" else "docs/runs/"


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


def render(run: Path, link: str = "docs/runs/") -> str:
    """The Markdown block for one run folder (bench.json, parity.json, stages.json); ``link``:
    docs/runs/ as seen from the document it goes into."""
    bench = json.loads((run / "bench.json").read_text())
    parity = json.loads((run / "parity.json").read_text())
    stages = json.loads((run / "stages.json").read_text())
    timing = "; ".join(f"{stage}: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
                       for stage, t in stages["timings_s"].items())
    memory = ", ".join(f"{k} {v} MiB" for k, v in stages["peak_rss_mib"].items())
    return "\n".join([
        f"Run `{run.name}`: {stages['description']}. Files: [docs/runs/{run.name}/]"
        f"({link}{run.name}/).", "",
        format_bench(bench), "", describe_limits(bench), "", format_recommendation(bench), "",
        f"Gate: **{'passed' if parity['passed'] else 'FAILED'}** on {parity['heldout']['images']} "
        f"held-out images and shapes {', '.join(parity['shapes'][1:])}"
        + (" (int8 gated where every side is at least 64 px; its thin corners are in parity.json)"
           if _has_ungated(parity) else "") + ".", "",
        _parity_table(parity), "",
        *([*format_accuracy(parity), ""] if parity.get("evaluation") else []),
        f"Stage times: {timing}. Peak memory: {memory}.", ""])


def _pattern(name: str, kind: str = "figures") -> re.Pattern:
    return re.compile(rf"(<!-- {kind}:{re.escape(name)}:begin -->\n).*?(<!-- {kind}:"
                      rf"{re.escape(name)}:end -->)", re.S)


def replace_block(text: str, name: str, block: str, kind: str = "figures") -> str:
    """``text`` with the block between `<!-- KIND:NAME:begin -->` and `...:end -->` replaced."""
    if not _pattern(name, kind).search(text):
        raise SystemExit(f"no <!-- {kind}:{name}:begin/end --> block to render {name} into")
    return _pattern(name, kind).sub(lambda m: m.group(1) + block + m.group(2), text)


def render_into_documents(name: str, run: Path) -> list[Path]:
    """Every document's block for ``name`` rendered again from ``run``; the documents changed."""
    found = []
    for document in FIGURE_DOCUMENTS:
        text = document.read_text()
        if _pattern(name).search(text):
            document.write_text(replace_block(text, name, render(run, runs_link(document))))
            found.append(document)
    if not found:
        raise SystemExit(f"no <!-- figures:{name}:begin/end --> block to render {name} into")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, nargs="?",
                        help="a build folder, e.g. build/se (none: re-render the stored run)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", help="what, where, which command (with a build)")
    parser.add_argument("--time-file", type=Path,
                        help="`/usr/bin/time -v` of the command that made the build (.ci/run keeps "
                             "build/make-engine.time.txt): its peak is stored and rendered with the run")
    args = parser.parse_args()
    run = RUNS / args.name
    if args.build is None:  # the renderer changed, the run did not
        written = render_into_documents(args.name, run)
        print(f"re-rendered the block {args.name} in {', '.join(map(str, written))} from {run}")
        return
    if not args.description:
        parser.error("--description is required with a build folder")
    run.mkdir(parents=True, exist_ok=True)
    for name in ("bench.json", "parity.json"):
        shutil.copyfile(args.build / name, run / name)
    manifest = json.loads((args.build / "manifest.json").read_text())
    peaks = {"export": manifest["export"]["peak_rss_mib"],
             "precision": manifest["calibration"]["peak_rss_mib"]}
    if args.time_file:
        text = args.time_file.read_text()
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if not found:
            parser.error(f"{args.time_file} holds no 'Maximum resident set size': "
                         f"not the output of /usr/bin/time -v")
        peaks = {"the whole build (its largest process, /usr/bin/time -v)": int(found[1]) // 1024, **peaks}
        shutil.copyfile(args.time_file, run / "make-engine.time.txt")
    stages = {"description": args.description,
              "timings_s": {"export": manifest["export"]["timings_s"],
                            "precision": manifest["calibration"]["timings_s"]},
              "peak_rss_mib": peaks}
    (run / "stages.json").write_text(json.dumps(stages, indent=2) + "\n")
    written = render_into_documents(args.name, run)
    print(f"wrote {run} and the block {args.name} in {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
