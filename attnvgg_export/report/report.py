"""report.md beside the manifest: the parity table, the speed table, and their plots, rendered
from the JSON files the stages wrote (manifest.json, parity.json, explain.json, selftest.json,
bench.json) and from nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnvgg_runtime.files import atomic_path, write_text_atomic
from attnvgg_runtime.manifest import Manifest, read_manifest, write_manifest
from attnvgg_runtime.probe import class_of
from attnvgg_runtime.verify.findings import Finding

ERRORS_PNG, LATENCY_PNG = "parity-errors.png", "bench-latency.png"
MODULES_PNG, ACCURACY_PNG = "explain-modules.png", "accuracy-drop.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save_png(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_error_histograms(path: Path, histograms: dict) -> Path:
    """The error histograms of parity.json (``error_histograms``), log-log."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, counts in histograms["counts"].items():
        ax.stairs(counts, histograms["edges"], linewidth=1.5, label=name)
    ax.set(xscale="log", yscale="log", xlabel="|artifact - eager| per logit",
           ylabel="count", title="Output error against eager PyTorch fp32 (held-out images)")
    if histograms["counts"]:
        ax.legend(fontsize=8)
    return _save_png(plt, fig, path)


def plot_module_errors(path: Path, explain: dict) -> Path:
    """rel L2 against eager at each module's output, in forward order, one line per artifact."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    modules: list[str] = []
    for name, errors in explain["artifacts"].items():
        modules = modules or [e["module"] for e in errors]
        ax.plot(range(len(errors)), [max(e["rel_l2"], 1e-9) for e in errors], marker=".", label=name)
    ax.set_xticks(range(len(modules)), modules, rotation=90, fontsize=6)
    ax.set(yscale="log", ylabel="rel L2 against eager at the module's output",
           title=f"Where error enters, module by module ({explain['images']} held-out images)")
    ax.legend(fontsize=8)
    return _save_png(plt, fig, path)


def format_module_errors(errors: list[dict], count: int = 10) -> str:
    """The ``count`` modules that add the most error (explain.json's records), as a table."""
    top = sorted(errors, key=lambda e: e["added"], reverse=True)[:count]
    lines = ["| module | kind | rel L2 at its output | added by it |", "|---|---|---|---|"]
    lines += [f"| {e['module']} | {e['kind']} | {e['rel_l2']:.3e} | {e['added']:+.3e} |" for e in top]
    return "\n".join(lines)


def _explain_section(explain: dict) -> list[str]:
    lines = ["## Where error enters", "",
             f"Each module's output in the artifact against eager PyTorch's, on {explain['images']} "
             "held-out images (`attnvgg-export explain --manifest manifest.json --artifact A` "
             "prints the whole list). The ten modules that add the most error:", ""]
    for name, errors in explain["artifacts"].items():
        lines += [f"### {name}", "", format_module_errors(errors), ""]
    return lines + [f"![modules]({MODULES_PNG})", ""]


def _selftest_section(selftest: dict) -> list[str]:
    lines = ["## Gate self-test", "",
             f"`make parity-selftest` planted {selftest['planted']} known bugs into copies of this "
             f"build (manifest sha256 updated, as a careless rebuild would) and the gate caught "
             f"**{selftest['caught']} of {selftest['planted']}**; a bug counts as caught only "
             f"where the same artifact unplanted passed the gate"
             + (f" (it did not for {', '.join(selftest['baseline_failed'])}: **baseline failed**)"
                if selftest.get("baseline_failed") else "")
             + (f"; scope: {selftest['scope']}" if "scope" in selftest else "") + ".", "",
             "| bug | artifact | planted | outcome | first failure |", "|---|---|---|---|---|"]
    for bug in selftest["bugs"]:
        first = bug["by"][0].replace("|", "/") if bug["by"] else ""
        outcome = bug.get("outcome", "caught" if bug["caught"] else "MISSED")
        lines.append(f"| {bug['bug']} | {bug['artifact']} | {bug['planted']} | "
                     f"{outcome if outcome == 'caught' else f'**{outcome}**'} | {first} |")
    return lines + [""]


def plot_latency(path: Path, bench: dict) -> Path:
    plt = _pyplot()
    names = [n for n, per in bench["results"].items() if any("p50_ms" in r for r in per.values())]
    batches = sorted({b for per in bench["results"].values() for b in per}, key=int)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(batches), 1)
    for i, batch in enumerate(batches):
        values = [bench["results"][n].get(batch, {}).get("p50_ms", 0) / int(batch) for n in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(names)) + width * (len(batches) - 1) / 2, names, rotation=20,
                  ha="right", fontsize=8)
    ax.set(ylabel="p50 latency per image (ms)", title="Latency per image, same run")
    ax.legend()
    return _save_png(plt, fig, path)


def _kernels(parity: dict) -> str:
    cpu = parity.get("cpu", {})
    readers = sorted({a["reader_version"] for a in parity["artifacts"] if a.get("reader_version")})
    where = (f"{cpu.get('model', 'an unnamed CPU')} ({', '.join(cpu.get('isa', [])) or 'no listed ISA flags'}"
             + (f"; emulated {cpu['emulated']}" if cpu.get("emulated") else "") + ")")
    return where + (f", {', '.join(readers)}" if readers else "")


def _budgets_line(parity: dict) -> str:
    changed = parity.get("budgets_changed")
    return ("" if not changed else "\n**Budgets changed from the defaults** by the tolerances "
            f"file given: {'; '.join(changed)}.")


def plot_accuracy_drops(path: Path, parity: dict) -> Path:
    """Each artifact's top-1 drop against eager on EVAL_DIR, with its 95% interval, against the
    budget: what decides the accuracy verdict, at a glance."""
    judged = [a for a in parity["artifacts"] if a.get("accuracy")]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(judged) + 1.5))
    for y, artifact in enumerate(judged):
        r = artifact["accuracy"]
        color = {"within budget": "tab:green", "over budget": "tab:red"}.get(r["verdict"], "tab:orange")
        error = [[100 * (r["drop"] - r["low"])], [100 * (r["high"] - r["drop"])]]
        ax.errorbar(100 * r["drop"], y, xerr=error, fmt="o", color=color, capsize=3)
    budgets = sorted({a["accuracy"]["budget"] for a in judged})
    for budget in budgets:
        ax.axvline(100 * budget, color="gray", linestyle="--")
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set(yticks=range(len(judged)), yticklabels=[f"{a['path']} [{a['reader']}]" for a in judged],
           xlabel="top-1 drop against eager fp32, points (95% interval; dashed: budget)",
           title=f"Accuracy drop on EVAL_DIR ({parity['evaluation']['images']} labelled images)")
    return _save_png(plt, fig, path)


def format_accuracy(parity: dict) -> list[str]:
    """The accuracy table (drop, interval, verdict) and the classes that move, from parity.json."""
    evaluation = parity["evaluation"]
    lines = [f"{evaluation['images']} labelled images in {evaluation['classes']} classes from "
             f"`{evaluation['source']}` (kept apart from calibration; sha256 of their identities "
             f"`{evaluation['ids_sha256'][:16]}`), eager fp32 top-1 {100 * evaluation['eager_top1']:.2f}%"
             + (f"; {len(evaluation['skipped'])} undecodable files skipped, first: "
                f"{evaluation['skipped'][0]}" if evaluation["skipped"] else "") + ". The drop is "
             "paired (the same images under eager and the artifact), its interval Tango's score "
             "interval (lost, gained and the number of images: with none changed of 381 images it "
             "still allows a 1-point drop): within budget means the whole interval is; "
             "over budget (with confidence, or by a point estimate these images resolve) fails the "
             "gate; not resolvable means these images cannot tell: a warning, with the images that "
             "would resolve it, failed only "
             f"under STRICT_ACCURACY=1{' (set for this run)' if parity.get('strict_accuracy') else ''}.",
             "", "| artifact | reader | top-1 | top-5 | drop (points) | 95% interval | lost / gained "
             "| budget | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for artifact in parity["artifacts"]:
        r = artifact.get("accuracy")
        if not r:
            continue
        verdict = r["verdict"] + (f" ({r['images_needed']} images would resolve it)"
                                  if r.get("images_needed") else "")
        lines.append(f"| {artifact['path']} | {artifact['reader']} | {100 * r['top1']:.2f}% | "
                     f"{100 * r['top5']:.2f}% | {100 * r['drop']:+.2f} | [{100 * r['low']:+.2f}, "
                     f"{100 * r['high']:+.2f}] | {r['lost']} / {r['gained']} | {100 * r['budget']:.2f} "
                     f"| {verdict} |")
    moved = [(a, m) for a in parity["artifacts"] if a.get("accuracy") for m in a["accuracy"]["moves"][:3]]
    if moved:
        lines += ["", "Classes that move (eager right and the artifact wrong: lost; the reverse: "
                  "gained), the three that lose most per artifact:", "",
                  "| artifact | reader | class | images | lost | gained |", "|---|---|---|---|---|---|"]
        lines += [f"| {a['path']} | {a['reader']} | {m['class']} | {m['images']} | {m['lost']} | "
                  f"{m['gained']} |" for a, m in moved]
    return lines


def _parity_section(parity: dict) -> list[str]:
    weights = ("trained weights" if parity["trained_weights"]
               else "random-init weights: top-1/top-5 not gated")
    heldout = parity.get("heldout", {})
    warnings = parity.get("warnings") or []
    lines = ["## Parity against eager PyTorch fp32", "",
             f"Gate: **{'passed' if parity['passed'] else 'FAILED'}**"
             + (f", **{len(warnings)} warnings** (below)" if warnings else "") + f" ({weights}). "
             f"Held-out images: {heldout.get('images', '?')} from "
             f"{heldout.get('distinct_sources', '?')} distinct sources (photographs, files or "
             f"array entries; top-1/top-5 gate only where these resolve the budget) "
             f"({heldout.get('source', '?')}), never used for calibration or tuning; shapes: "
             f"{', '.join(parity.get('shapes', []))}. "
             "Every portable graph is read by ONNX Runtime and by OpenVINO, held to each other "
             "(agreement_max; int8: agreement_factor x their own error); every converted file "
             "to its conversion done again from its source on this box (derived_max, "
             "\"vs redone\") and to its source's error against eager (derived_excess_max). "
             "Margin: the tightest of an artifact's checks, budget / measured (below 1 fails). "
             "Verdicts are bound to the artifacts' sha256 and to the "
             f"kernels that computed them: {_kernels(parity)}.", _budgets_line(parity),
             "", "| artifact | reader | case | rel L2 | worst image | min cosine | max abs | top-1 | "
             "top-5 | accuracy | vs redone | margin | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for artifact in parity["artifacts"]:
        reader = artifact.get("reader", "onnxruntime")
        if artifact["skipped"]:
            lines.append(f"| {artifact['path']} | {reader} | - | | | | | | | | | | "
                         f"SKIPPED, not verified: {artifact['skipped']} |")
        findings = [Finding.from_json(f) for f in artifact["failures"]]
        general = [str(f) for f in findings if f.case not in artifact["cases"]]
        if general:
            lines.append(f"| {artifact['path']} | {reader} | all | | | | | | | | | | "
                         f"FAIL: {'; '.join(general)} |")
        for case, r in artifact["cases"].items():
            failed = any(f.case == case for f in findings)
            accuracy = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else ""
            verdict = "FAIL" if failed else "ok" if r.get("gated", True) else "not gated"
            image = f"{r['rel_l2_image']:.2e}" if "rel_l2_image" in r else ""
            source = f"{r['rel_l2_vs_reconverted']:.2e}" if "rel_l2_vs_reconverted" in r else ""
            margin = artifact.get("margin") if case == "heldout" else None
            margin = f"{margin:.3g}" if margin is not None else ""
            lines.append(f"| {artifact['path']} | {reader} | {case} | {r['rel_l2']:.2e} | {image} | "
                         f"{r['cosine']:.5f} | {r['max_abs']:.2e} | {r['top1']:.3f} | {r['top5']:.3f} "
                         f"| {accuracy} | {source} | {margin} | {verdict} |")
    if warnings:
        lines += ["", "Warnings: passed, not proven (each named in parity.json `warnings` and in "
                  "parity.junit.xml):", "", *[f"- {w}" for w in warnings]]
    return lines + ["", f"![errors]({ERRORS_PNG})", ""]


def _limit_key(precision: str, probes: dict) -> str:
    """The limit a row of ``precision`` is measured against: its own where a GEMM of that
    precision was probed (fp32, int8, bf16), else fp32's (an fp16 graph on a CPU)."""
    return precision if any(precision in p for p in probes.values()) else "fp32"


def _probes(bench: dict) -> dict:
    # bench.json before gemm_probes held one library's figures (ONNX Runtime; torch for bf16)
    return bench.get("gemm_probes") or {"ONNX Runtime/torch": bench.get("peak_gmacs", {})}


def bench_limits(bench: dict) -> dict:
    """Per precision, the most MAC/s this run saw: the best GEMM probe or the best row, and which
    one it was. "% of peak" is a share of it, so it never passes 100 (a runtime's fused
    convolutions can beat one library's GEMM)."""
    probes = _probes(bench)
    limits: dict = {}
    for source, peaks in probes.items():
        for precision, value in peaks.items():
            if value > limits.get(precision, {}).get("gmacs", 0):
                limits[precision] = {"gmacs": value, "by": f"{source} GEMM"}
    for name, per_batch in bench["results"].items():
        key = _limit_key(bench["rows"][name]["precision"], probes)
        for batch, r in per_batch.items():
            if r.get("gmacs_per_s", 0) > limits.get(key, {}).get("gmacs", 0):
                limits[key] = {"gmacs": r["gmacs_per_s"], "by": f"{name} at batch {batch}"}
    return limits


def peak_share(bench: dict, name: str, result: dict) -> float | None:
    if "gmacs_per_s" not in result:
        return None
    limits = bench_limits(bench)  # derived from the probes and the rows, never stored
    key = _limit_key(bench["rows"][name]["precision"], _probes(bench))
    return result["gmacs_per_s"] / limits[key]["gmacs"]


def describe_limits(bench: dict) -> str:
    """What "x eager" divides by and what "% of peak" is a share of, from bench.json."""
    limits = bench_limits(bench)
    named = "; ".join(f"{p} {v['gmacs']:.0f} GMAC/s ({v['by']})" for p, v in limits.items())
    return ("\"x eager\": eager fp32's p50 (PyTorch in inference mode, channels-last) over the "
            "row's, measured in the same run. \"% of peak\": a share of the most MAC/s this run "
            f"saw for that precision, from GEMM probes ({', '.join(_probes(bench))}) or the rows "
            f"themselves: {named or 'not measured (input not square)'}.")


def format_bench(bench: dict) -> str:
    lines = ["| runtime | batch | p50 ms | p90 ms | p99 ms | img/s | x eager | GMAC/s | % of peak "
             "| first result s (cold / cache warm) |", "|---|---|---|---|---|---|---|---|---|---|"]
    starts = bench.get("first_result") or {}
    for name, per_batch in bench["results"].items():
        for i, (batch, r) in enumerate(per_batch.items()):
            start = starts.get(name, {}) if i == 0 else {}
            first = ("failed: " + start["error"] if "error" in start else
                     f"{start['cold_s']:.2f}" + (f" / {start['cache_warm_s']:.2f}" if "cache_warm_s" in start
                                                else "") if start else "")
            if "error" in r:
                lines.append(f"| {name} | {batch} | failed: {r['error']} | | | | | | | {first} |")
                continue
            lines.append(
                f"| {name} | {batch} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['images_per_s']:.1f} | {r['speedup_vs_eager']:.2f} | "
                f"{r.get('gmacs_per_s', 0):.0f} | {100 * (peak_share(bench, name, r) or 0):.0f} | {first} |")
    return "\n".join(lines)


TARGET_NAMES = {"onnxruntime-cpu": "ONNX Runtime (portable: x86 and ARM)",
                "openvino-cpu": "OpenVINO (Intel CPUs)", "tensorrt": "TensorRT (NVIDIA GPUs)"}


def format_frames_and_starts(manifest, parity: dict | None, bench: dict | None) -> list[str]:
    """The camera-frame artifacts (uint8 NHWC in) per CPU target with their verdict, and the
    first result (cold start) of what ships, with where a model cache or another artifact of the
    target starts faster."""
    verdicts = [a for a in (parity or {}).get("artifacts", []) if not a.get("skipped")]
    lines = []
    for artifact in (a for a in manifest.artifacts if a.input is not None):
        mine = [v for v in verdicts if v["path"] == artifact.path]
        status = ("passed the gate" if mine and all(v["passed"] for v in mine) else
                  "FAILED the gate" if mine else "not gated yet")
        lines.append(f"- Camera frames for {TARGET_NAMES.get(artifact.target, artifact.target)}: "
                     f"{artifact.path} ({artifact.precision}; input `{artifact.input['name']}`, uint8 "
                     f"NHWC {artifact.input['channel_order']}, scaling, normalization and transpose "
                     f"inside; {status}).")
    starts = (bench or {}).get("first_result") or {}
    recommended = ((bench or {}).get("recommended") or {}).get("1", {})
    for target, chosen in recommended.items():
        name = next((n for n, r in bench["rows"].items() if r["artifact"] == chosen["artifact"]
                     and r["precision"] == chosen["precision"] and r["target"] == target), None)
        start = starts.get(name) or {}
        if "cold_s" not in start:
            continue
        line = (f"- First result of {chosen['artifact']} ({TARGET_NAMES.get(target, target)}), from "
                f"process start (load, compile, one image): {start['cold_s']:.2f} s cold")
        if "cache_warm_s" in start:
            line += f", {start['cache_warm_s']:.2f} s with OpenVINO's model cache warm"
            if start["cache_warm_s"] < 0.8 * start["cold_s"]:
                line += " (set CACHE_DIR on the box: it starts faster)"
        faster = [(s["cold_s"], bench["rows"][n]["artifact"]) for n, s in starts.items()
                  if "cold_s" in s and bench["rows"][n]["target"] == target and n != name
                  and s["cold_s"] < 0.8 * start["cold_s"]
                  and (bench["rows"][n]["artifact"], bench["rows"][n]["runtime"]) in _passed(parity)]
        if faster:
            seconds, artifact = min(faster)
            line += f"; {artifact} starts in {seconds:.2f} s, where a process per request matters more"
        lines.append(line + ".")
    return [""] + lines if lines else []


def _passed(parity: dict | None) -> set[tuple[str, str]]:
    return {(a["path"], a["reader"]) for a in (parity or {}).get("artifacts", []) if a.get("passed")
            and not a.get("skipped")}


def format_recommendation(bench: dict) -> str:
    cpu = bench.get("cpu", {})
    lines = [f"Measured on {cpu.get('model', 'an unnamed CPU')} ({', '.join(cpu.get('isa', []))}, "
             f"{cpu.get('threads', '?')} threads). The fastest artifact that passed the gate, per "
             "target and batch size:", ""]
    if not bench.get("gate_checked"):
        return lines[0] + " No recommendation: `make parity` has not run on this build."
    lines += ["| batch | target | artifact | runtime options | p50 ms | x eager |",
              "|---|---|---|---|---|---|"]
    for batch, targets in bench.get("recommended", {}).items():
        for target, r in targets.items():
            options = ", ".join(f"{k}={v}" for k, v in r["runtime_options"].items()) or "-"
            ties = (f"; within 5%, a tie on this machine: {', '.join(r['ties'])}"
                    if r.get("ties") else "")
            lines.append(f"| {batch} | {TARGET_NAMES.get(target, target)} | {r['artifact']} "
                         f"({r['precision']}){ties} | {options} | {r['p50_ms']:.1f} | "
                         f"{r['speedup_vs_eager']:.2f} |")
    lines += ["", "This is a measurement on the machine that ran `make bench`, not a property of "
              "the artifacts: which runtime is fastest depends on the CPU's kernels. On the "
              "target box, run `attnvgg-runtime bench manifest.json` (no torch; "
              "`attnvgg-runtime classify` then chooses by it) or `make bench` on a copy of the "
              "build (docs/edge.md)."]
    return "\n".join(lines)


def format_data_notes(manifest) -> list[str]:
    """The calibration source's files that were skipped (path and reason) and what else the data
    stage noted (images upscaled from tiny sources, fewer images than asked)."""
    skipped = (manifest.data_split or {}).get("skipped", [])
    notes = [n for n in (manifest.calibration or {}).get("notes", []) if "skipped" not in n]
    if not skipped and not notes:
        return []
    lines = ["## Calibration data", ""] + [f"- {note}" for note in notes]
    if skipped:
        lines += ["", f"{len(skipped)} files of the source were skipped (each stage skips the same "
                  f"ones; the gate's held-out set is rebuilt without them):", "",
                  "| set | file | reason |", "|---|---|---|"]
        lines += [f"| {s['set']} | {s['file']} | {s['reason']} |" for s in skipped]
    return lines + [""]


def format_fallback(calibration: dict) -> list[str]:
    """The layer fallback's decision per int8 graph: which layers stay float and why (the aim,
    each layer's share of the top-1 drop on the labelled tuning images), and what the held-out
    images confirmed."""
    lines = ["## Layer fallback", "",
             f"Calibration: {calibration['method']} on {calibration['images']} images from "
             f"{calibration['source']}.", "",
             "| int8 graph | layers in float (aim) | tuning top-1 drop before / after | "
             "held-out drop, 95% interval | held-out verdict |", "|---|---|---|---|---|"]
    for target, r in calibration["fallback"].items():
        kept = ", ".join(f"{f['module']} ({f.get('aim', r['metric'])}"
                         + (f", share {f['share']:.2f}" if "share" in f else "") + ")"
                         for f in r["fallen_back"]) or "none"
        aimed = r.get("accuracy")
        if not aimed:
            lines.append(f"| {target} | {kept} | no labelled tuning images | | |")
            continue
        tuning = (f"{100 * aimed['initial']['drop']:+.2f} / {100 * aimed['final']['drop']:+.2f} "
                  f"points on {aimed['images']}")
        c = aimed.get("confirmed")
        held = (f"{100 * c['drop']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] on "
                f"{c['images']}" if c else "")
        if aimed.get("acted") is False and aimed["initial"]["drop"] > aimed["budget"]:
            tuning += f" ({aimed['verdict_initial']}: nothing kept in float for it)"
        lines.append(f"| {target} | {kept} | {tuning} | {held} | {c['verdict'] if c else ''} |")
    budget = next((r["accuracy"]["budget"] for r in calibration["fallback"].values()
                   if r.get("accuracy")), None)
    lines += ["", f"Budget for the drop: {100 * budget:.2f} points (int8 accuracy_drop_max). Where "
              "the tuning images have labels, layers are kept in float by their share of the top-1 "
              "drop first, then by the error each adds until the gate's rel-L2 budgets hold with "
              "margin (docs/precision.md)." if budget is not None else
              "Layers kept in float by the error each adds, until the gate's budgets hold with "
              "margin; the tuning images have no labels, so accuracy did not aim the fallback.", ""]
    return lines





def _summary_section(manifest: Manifest, parity: dict | None, bench: dict | None) -> list[str]:
    """One screen first: per target, what to ship (the fastest artifact at batch 1 that passed
    the gate), its verdict and margin, its speed against eager, and what was not verified here."""
    cpu = (parity or bench or {}).get("cpu", {})
    here = f"{cpu.get('model', 'an unrecorded CPU')} ({class_of(cpu)})" if cpu else "no machine yet"
    lines = ["## What to ship", "",
             f"Built and checked on {here}. Per target: the fastest artifact at batch 1 that passed "
             f"the gate for its bytes; margin is the tightest of its checks, budget / measured.", "",
             "| target | ship | gate here | margin | p50 ms, batch 1 | x eager | not verified here |",
             "|---|---|---|---|---|---|---|"]
    verdicts = {(a["path"], a["reader"]): a for a in (parity or {}).get("artifacts", [])}
    recommended = ((bench or {}).get("recommended") or {}).get("1", {})
    for target in TARGET_NAMES:
        chosen = recommended.get(target)
        if target == "tensorrt" and not any(a.format == "plan" for a in manifest.artifacts):
            lines.append(f"| {TARGET_NAMES[target]} | no plan built: no NVIDIA GPU and tensorrt here | | "
                         f"| | | the plans: build on the GPU box (`make engine`), then `attnvgg-runtime "
                         f"verify` there (docs/tensorrt.md) |")
            continue
        if chosen is None:
            why = ("`make bench` has not run" if bench is None else
                   "`make parity` has not run" if parity is None else "nothing passed the gate")
            lines.append(f"| {TARGET_NAMES[target]} | none: {why} | | | | | |")
            continue
        verdict = verdicts.get((chosen["artifact"], chosen.get("reader")), {})
        margin = verdict.get("margin")
        others = ("other box classes (ARM, x86 with and without VNNI): `attnvgg-runtime verify` "
                  "on the box; stored runs in docs/edge.md" if target == "onnxruntime-cpu" else
                  "other Intel CPUs: `attnvgg-runtime verify` on the box" if target == "openvino-cpu"
                  else "")
        lines.append(f"| {TARGET_NAMES[target]} | {chosen['artifact']} ({chosen['precision']}) | "
                     f"{'passed' if verdict.get('passed') else 'FAILED'} | "
                     f"{f'{margin:.3g}' if margin is not None else ''} | {chosen['p50_ms']:.1f} | "
                     f"{chosen['speedup_vs_eager']:.2f} | {others} |")
    lines += format_frames_and_starts(manifest, parity, bench)
    unverified = (parity or {}).get("not_verified") or []
    warnings = (parity or {}).get("warnings") or []
    if warnings:
        lines += ["", f"The gate passed with {len(warnings)} warnings (passed, not proven; the parity "
                  f"section lists them), first: {warnings[0]}"]
    if unverified:
        lines += ["", "Not verified on this machine (it cannot compute them): "
                  + "; ".join(f"{u}" for u in unverified) + "."]
    return lines + ["", "The full tables follow.", ""]


REPORT = "report.md"


def publish(root: Path, manifest: Manifest) -> Path:
    """The one publish step of a stage: report.md rendered from ``manifest`` and the stage files
    beside it, then the manifest, naming it, written once (report first: a manifest never names a
    report that is not there). Returns the manifest's path."""
    write_report(root, manifest)
    manifest.report = REPORT
    return write_manifest(root / "manifest.json", manifest)


def write_report(root: Path, manifest: Manifest | None = None) -> Path:
    """report.md from ``manifest`` (read from ``root`` where not given) and the JSON files the
    stages wrote; the manifest is the caller's to write (publish)."""
    manifest = manifest or read_manifest(root / "manifest.json")
    parity = json.loads((root / "parity.json").read_text()) if (root / "parity.json").is_file() else None
    bench = json.loads((root / "bench.json").read_text()) if (root / "bench.json").is_file() else None
    lines = [f"# {manifest.variant}: deployment report", "",
             *_summary_section(manifest, parity, bench),
             "## Artifacts", "",
             f"Weights: {manifest.weights}. Input `{manifest.input['name']}` "
             f"{manifest.input['shape']}, declared ranges "
             + ", ".join(f"{k} {v['min']}-{v['max']} (opt {v['opt']})"
                         for k, v in manifest.dynamic.items()) + ".", "",
             "| artifact | format | precision | target | MB |", "|---|---|---|---|---|"]
    lines += [f"| {a.path} | {a.format} | {a.precision} | {a.target} | "
              f"{a.bytes / 1e6:.1f} |" for a in manifest.artifacts]
    lines.append("")
    if (manifest.calibration or {}).get("fallback"):
        lines += format_fallback(manifest.calibration)
    lines += format_data_notes(manifest)
    if parity is not None:
        if parity.get("error_histograms"):
            plot_error_histograms(root / ERRORS_PNG, parity["error_histograms"])
        lines += _parity_section(parity)
        if parity.get("evaluation"):
            plot_accuracy_drops(root / ACCURACY_PNG, parity)
            lines += ["## Accuracy on EVAL_DIR", "", *format_accuracy(parity), "",
                      f"![accuracy]({ACCURACY_PNG})", ""]
    if (root / "explain.json").is_file():
        explain = json.loads((root / "explain.json").read_text())
        if explain["artifacts"]:
            plot_module_errors(root / MODULES_PNG, explain)
            lines += _explain_section(explain)
    if (root / "selftest.json").is_file():
        lines += _selftest_section(json.loads((root / "selftest.json").read_text()))
    if bench is not None:
        lines += ["## Speed", "", f"Input {bench['input'][0]}x{bench['input'][1]}, "
                  f"{bench['threads']} threads. {describe_limits(bench)}", "", format_bench(bench), "",
                  "### Recommended", "", format_recommendation(bench), "",
                  f"![latency]({LATENCY_PNG})", ""]
    return write_text_atomic(root / REPORT, "\n".join(lines))
