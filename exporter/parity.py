"""Stage: parity, the CI gate. Every artifact against eager PyTorch fp32, on held-out real
images and at shapes across the declared range, against the budgets in tolerances.toml.

Running (runners) and comparing (metrics) are separate; the gate verdict is data (ParityReport)
and the CLI turns it into an exit code."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.data import NOISE, ImageSet, SplitCounts, load_data_split
from calibration.preprocessing import Preprocessing
from models import ConfigError, ReaderUnavailable

from .budgets import (  # noqa: F401
    AGREEMENT_METRICS,
    CORNER_IMAGES,
    DRIFT_FLOOR,
    INT8_MIN_SIDE,
    ShapeCase,
    load_tolerances,
    metrics,
    resolvable,
    shape_cases,
)
from .cpu import openvino_has_bf16, openvino_int8_has_vnni
from .emulated import EmulatedRunner, emulated_cpu
from .explain import EXPLAIN_IMAGES, first_past, module_errors, write_explain_json
from .export import model_from_manifest
from .files import atomic_path, write_text_atomic
from .manifest import ManifestError, read_manifest, verify_artifacts, write_manifest
from .precision import run_batches
from .report import ERRORS_PNG, plot_error_histograms, write_report
from .runners import OnnxRuntimeRunner, OpenVinoRunner, run_torch


def breaches(result: dict, budget: dict, trained: bool, built: float | None = None) -> list[str]:
    """What breaks the budget. ``built``: the rel L2 the precision stage measured for this
    artifact on the same held-out images; drifting past it means the file no longer computes
    what the build measured."""
    found = [] if result["finite"] else ["NaN or Inf in the outputs"]
    if built is not None and "drift_max" in budget:
        allowed = built * (1 + budget["drift_max"]) + DRIFT_FLOOR
        if result["rel_l2"] > allowed:
            found.append(f"drift: rel L2 {result['rel_l2']:.4g}, the build measured {built:.4g} on "
                         f"the same images (allowed {allowed:.4g}): the artifact changed since it "
                         f"was measured")
    checks = {
        "rel_l2_max": (result["rel_l2"], lambda v, b: v <= b),
        "cosine_min": (result["cosine"], lambda v, b: v >= b),
        "top1_min": (result["top1"], lambda v, b: v >= b),
        "top5_min": (result["top5"], lambda v, b: v >= b),
    }
    if "accuracy" in result:
        checks["accuracy_drop_max"] = (result["accuracy_eager"] - result["accuracy"],
                                       lambda v, b: v <= b + 1e-12)
    for key, (value, ok) in checks.items():
        gated = key in budget and (trained or key not in AGREEMENT_METRICS)
        if gated and resolvable(key, result, budget) and not ok(value, budget[key]):
            found.append(f"{key.rsplit('_', 1)[0]} {value:.4g} (budget {budget[key]:.4g})")
    return found


@dataclass
class ArtifactParity:
    path: str
    precision: str
    reader: str = "onnxruntime"  # the runtime that ran it: onnxruntime, openvino, tensorrt
    cases: dict[str, dict] = field(default_factory=dict)  # case name -> metrics
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None  # only a TensorRT plan on a machine that cannot run one
    where: str | None = None  # for a failing graph: the module where its error passes the budget

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def label(self) -> str:
        return f"{self.path} [{self.reader}]"


@dataclass
class ParityReport:
    variant: str
    trained: bool
    artifacts: list[ArtifactParity]
    heldout: dict = field(default_factory=dict)  # what the held-out set is, and its sha256
    shapes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def failures(self) -> list[str]:
        return [f"{a.label}: {f}" + (f"; {a.where}" if a.where else "")
                for a in self.artifacts for f in a.failures]

    def skipped(self) -> list[str]:
        return [f"{a.label}: {a.skipped}" for a in self.artifacts if a.skipped]

    def to_json(self) -> dict:
        return {"variant": self.variant, "trained_weights": self.trained, "passed": self.passed,
                "heldout": self.heldout, "shapes": self.shapes, "emulated_cpu": emulated_cpu(),
                "artifacts": [a.__dict__ | {"passed": a.passed} for a in self.artifacts]}


READERS = {"onnx": ("onnxruntime", "openvino"), "ort": ("onnxruntime",), "plan": ("tensorrt",),
           "openvino-ir": ("openvino",)}


def runner_for(artifact: dict, root: Path, manifest: dict, reader: str):
    """The artifact under one reader: ONNX Runtime and OpenVINO on the CPU (every portable graph
    is read by both), TensorRT for plans (GPU machines). ReaderUnavailable where this machine
    cannot compute it."""
    path = root / artifact["path"]
    if reader == "tensorrt":
        from .tensorrt_engine import TensorRTRunner

        # version-compatible plans embed host code: trusted, since this build made them
        trusted = manifest.get("tensorrt", {}).get("version_compatible", False)
        return TensorRTRunner(path, host_code_allowed=trusted)
    if reader == "openvino-bf16" and not openvino_has_bf16():
        raise ReaderUnavailable("this CPU does not compute bf16 (no AMX or AVX512-BF16): the bf16 "
                                "entry runs only where it does")
    if reader == "openvino" and not openvino_int8_has_vnni() and signed_int8_activations(artifact, root):
        raise ReaderUnavailable("OpenVINO on a CPU without VNNI saturates signed int8 activations "
                                "(int16 pair sums, docs/precision.md); ONNX Runtime reads this "
                                "graph here, and its target is TensorRT")
    exact = "exact_int8_session_options" in artifact
    hint = artifact.get("runtime_options", {}).get("INFERENCE_PRECISION_HINT", "f32")
    cpu = emulated_cpu()
    if cpu:  # the reader runs as that CPU would run it (exporter.emulated)
        return EmulatedRunner(cpu, "openvino" if reader.startswith("openvino") else "onnxruntime",
                              path, exact, hint)
    if reader.startswith("openvino"):
        return OpenVinoRunner(path, hint)
    return OnnxRuntimeRunner(path, exact_int8=exact)


def signed_int8_activations(artifact: dict, root: Path) -> bool:
    """An int8 ONNX graph whose activations are quantized to signed int8 (the int8-trt graph)."""
    from .quantize import qdq_types

    if artifact["format"] != "onnx" or artifact["precision"] != "int8":
        return False
    try:
        return "int8" in qdq_types(root / artifact["path"])["activation"]
    except Exception:  # a graph that does not load: the reader says so, and it fails the gate
        return False


def heldout_images(manifest: dict) -> ImageSet:
    """Exactly the held-out set the precision stage set aside, rebuilt from the manifest's record
    and checked by the sha256 of its image identities."""
    record = manifest.get("data_split")
    if record is None:
        raise ManifestError("the manifest records no calibration/tuning/held-out split (a build "
                            "older than schema 1.1); rebuild it with `make engine`")
    pre = Preprocessing.from_json(manifest["preprocessing"])
    split = load_data_split(record["source"], pre, SplitCounts(**record["counts"]), record["seed"],
                            subsets=("heldout",))
    if split.heldout.ids_sha256() != record["ids_sha256"]["heldout"]:
        raise ManifestError(
            f"the held-out images from {record['source']} are not the ones the build set aside "
            f"(sha256 of their identities differs): the data changed since the build; rebuild "
            f"with `make engine` so that calibration and parity see the same split")
    return split.heldout


FALLBACK_ARTIFACTS = {"int8-trt": ("model.int8-trt.onnx",),
                      "int8-cpu": ("model.int8-cpu.onnx", "engines/ort/model.int8-cpu.ort")}


def _check_artifact(artifact: dict, reader: str, root: Path, manifest: dict, cases: dict,
                    references: dict, budget: dict, trained: bool,
                    heldout_outputs: dict) -> ArtifactParity:
    # the precision stage measured each graph with ONNX Runtime; drift is judged against that
    built_rel_l2 = {r["path"]: r["rel_l2"] for r in
                    manifest["parity"].get("heldout-vs-eager", {}).values() if "rel_l2" in r}
    if artifact.get("runtime_options", {}).get("INFERENCE_PRECISION_HINT") == "bf16":
        reader = "openvino-bf16"  # the fp32 IR, listed again to be run in bf16
    entry = ArtifactParity(artifact["path"], artifact["precision"], reader)
    try:
        runner = runner_for(artifact, root, manifest, reader)
    except ReaderUnavailable as e:  # this machine cannot compute it: reported, not passed
        entry.skipped = str(e).splitlines()[0]
        return entry
    except Exception as e:  # any other artifact that does not load fails the gate
        entry.failures.append(f"cannot be loaded: {type(e).__name__}: {str(e).strip()[:300]}")
        return entry
    for name, case in cases.items():
        try:
            outputs = run_batches(runner, case.images, case.batch)
        except Exception as e:  # a runtime error at a declared shape is a breach, not a crash
            entry.failures.append(f"{name}: fails to run: {str(e).strip().splitlines()[-1][:240]}")
            continue
        built = None
        if name == "heldout":
            heldout_outputs[entry.label] = outputs
            built = built_rel_l2.get(artifact["path"]) if reader == "onnxruntime" else None
        result = metrics(outputs, references[name], case.labels)
        entry.cases[name] = result
        if not case.gates(artifact["precision"]):
            result["gated"] = False  # measured and reported; see ShapeCase.gates
            continue
        entry.failures += [f"{name}: {b}" for b in breaches(result, budget, trained, built)]
    return entry


def static_violations(path: Path, artifact: dict) -> list[str]:
    """What a graph's structure must obey, whatever its numbers on these images: TensorRT's Q/DQ
    rules for the TensorRT int8 graph, 7-bit weights for the CPU int8 graph (else x86 CPUs
    without VNNI saturate, and this machine's verdict would not hold on them), float32 cast
    islands for the fp16 graph."""
    if artifact["format"] != "onnx":
        return []
    from .fp16 import fp16_violations
    from .quantize import tensorrt_qdq_violations, weights_past_seven_bits

    checks = {("int8", True): tensorrt_qdq_violations,
              ("int8", False): weights_past_seven_bits,  # else x86 without VNNI saturates
              ("fp16", True): fp16_violations}
    check = checks.get((artifact["precision"], artifact["target"] == "tensorrt"))
    if check is None:
        return []
    try:
        found = check(path)
    except Exception:  # a graph that does not load fails through its reader
        return []
    return [f"graph structure: {v}" for v in found[:5]] + (
        [f"graph structure: and {len(found) - 5} more"] if len(found) > 5 else [])


def reader_disagreement(entries: list[ArtifactParity], heldout_outputs: dict,
                        budget: dict) -> str | None:
    """Two readers of one graph that compute different things: reported as such, even when
    each is within its budget against eager."""
    outputs = [heldout_outputs[e.label] for e in entries if e.label in heldout_outputs]
    if len(outputs) < 2:
        return None
    a, b = (o.astype(np.float64) for o in outputs[:2])
    between = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    if between <= budget.get("rel_l2_max", float("inf")):
        return None
    return (f"readers disagree: {entries[0].reader} and {entries[1].reader} differ by rel L2 "
            f"{between:.4g} on the held-out images (budget {budget['rel_l2_max']:.4g}); one of "
            f"them does not compute what the graph says (see docs/precision.md)")


def run_parity(manifest_path: Path, tolerances: Path | None = None, log=print,
               only: set[str] | None = None, cases: set[str] | None = None) -> ParityReport:
    """The gate. ``only``: check just these artifact paths (the self-test's planted bugs);
    ``cases``: just these shape cases (the emulated run of `make test-isa`, where every kernel
    runs ~30 times slower). The verdict then covers only them."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    verify_artifacts(manifest_path)  # missing or edited artifacts are refused before anything runs
    manifest = read_manifest(manifest_path)
    budgets = load_tolerances(manifest["variant"], tolerances)
    missing = sorted({a["precision"] for a in manifest["artifacts"]} - set(budgets))
    if missing:
        raise ConfigError(f"no parity budget for precision {', '.join(missing)}: add a "
                          f"[precision.{missing[0]}] section to {tolerances or 'the tolerances'}")
    trained = bool(manifest["model"]["checkpoint"])
    heldout = heldout_images(manifest)
    all_cases = shape_cases(manifest["dynamic"], heldout,
                            noise=manifest["data_split"]["source"] == NOISE)
    unknown = (cases or set()) - set(all_cases)
    if unknown:
        raise ConfigError(f"no shape case {sorted(unknown)} in this build; its cases: "
                          f"{', '.join(all_cases)}")
    cases = {name: case for name, case in all_cases.items()  # held-out: drift, errors, explain
             if cases is None or name in cases | {"heldout"}}
    if only:
        listed = {a["path"] for a in manifest["artifacts"]}
        if only - listed:
            raise ConfigError(f"no artifact {sorted(only - listed)} in {manifest_path}; it lists "
                              f"{', '.join(sorted(listed))}")
    model = model_from_manifest(manifest)
    references = {name: run_batches(lambda x: run_torch(model, x), case.images, case.batch)
                  for name, case in cases.items()}
    if emulated_cpu():
        log(f"readers run as an emulated {emulated_cpu()} CPU (qemu-x86_64; exporter.emulated)")
    log(f"parity against eager PyTorch fp32 on {len(heldout)} held-out images ({heldout.source}; "
        f"never used for calibration or tuning) and at {len(cases) - 1} corner shapes "
        f"({', '.join(f'{n} on {len(c.images)} images' for n, c in list(cases.items())[1:])}; "
        f"int8 gated where every side is at least {INT8_MIN_SIDE} px); "
        + ("trained weights: top-1/top-5 budgets apply" if trained else
           "random-init weights: top-1/top-5 reported, not gated"))
    missed = {target: report for target, report in
              manifest.get("calibration", {}).get("fallback", {}).items() if not report["met"]}
    results, heldout_outputs = [], {}
    for artifact in manifest["artifacts"]:
        if only is not None and artifact["path"] not in only:
            continue
        budget = budgets[artifact["precision"]]
        entries = [_check_artifact(artifact, reader, root, manifest, cases, references, budget,
                                   trained, heldout_outputs)
                   for reader in READERS[artifact["format"]]]
        disagreement = reader_disagreement(entries, heldout_outputs, budget)
        if disagreement:
            entries[-1].failures.append(disagreement)
        entries[0].failures += static_violations(root / artifact["path"], artifact)
        for entry in entries:
            for target, report in missed.items():
                if artifact["path"] in FALLBACK_ARTIFACTS[target]:
                    entry.failures.append(f"the layer fallback missed its target: {report['metric']} "
                                          f"{report['final']:.4f} < {report['goal']} on the tuning set")
            results.append(entry)
    exact = {a["path"] for a in manifest["artifacts"] if "exact_int8_session_options" in a}
    explain_graphs(results, root, model, cases, budgets, log, exact)
    for entry in results:
        _log_entry(entry, log)
    errors = {label: (outputs - references["heldout"]).ravel()
              for label, outputs in heldout_outputs.items()}
    report = ParityReport(manifest["variant"], trained, results,
                          {"images": len(heldout), "source": heldout.source,
                           "ids_sha256": heldout.ids_sha256()}, list(cases))
    write_parity_files(root, report)
    plot_error_histograms(root / ERRORS_PNG, errors)
    manifest["parity"]["gate"] = {"passed": report.passed, "failures": report.failures(),
                                  "skipped": report.skipped(), "file": "parity.json",
                                  "junit": "parity.junit.xml"}
    write_manifest(manifest_path, manifest)
    write_report(root)
    return report


def explain_graphs(results: list[ArtifactParity], root: Path, model, cases: dict[str, ShapeCase],
                   budgets: dict, log, exact: set[str] = frozenset()) -> dict:
    """Module-by-module error (exporter.explain) of every reduced-precision graph on held-out
    images, for the report, and of every failing graph on the images of the case it fails first,
    whose failure then names the module where the error first grows past its budget."""
    explained = {}
    for entry in results:
        graph = entry.path.endswith(".onnx") and entry.reader == "onnxruntime"
        if not graph or (entry.precision == "fp32" and entry.passed) or entry.skipped:
            continue
        try:
            explained[entry.path] = module_errors(root / entry.path, model,
                                                  cases["heldout"].images[:EXPLAIN_IMAGES],
                                                  exact_int8=entry.path in exact)
            if entry.passed:
                continue
            failing = next((name for name in cases if any(f.startswith(f"{name}: ")
                                                          for f in entry.failures)), "heldout")
            errors = explained[entry.path] if failing == "heldout" else module_errors(
                root / entry.path, model, cases[failing].images[:EXPLAIN_IMAGES],
                exact_int8=entry.path in exact)
        except Exception as e:  # a graph that does not load has failed already; say why not
            log(f"  {entry.path}: no module-by-module error ({str(e).splitlines()[0][:160]})")
            continue
        budget = budgets[entry.precision].get("rel_l2_max", 0.0)
        first = first_past(errors, budget)
        images = f"{EXPLAIN_IMAGES} images at {failing}"
        entry.where = (f"error first grows past the rel L2 budget {budget:g} at {first.module} "
                       f"({first.kind}, rel L2 {first.rel_l2:.3g} on {images})" if first else
                       f"no module's output passes the rel L2 budget {budget:g} on {images}")
    write_explain_json(root, explained, EXPLAIN_IMAGES)
    return explained


def _log_entry(entry: ArtifactParity, log) -> None:
    if entry.skipped:
        log(f"  {entry.label}: SKIPPED, not verified ({entry.skipped})")
        return
    gated = [r for r in entry.cases.values() if r.get("gated", True)]
    worst = max(gated, key=lambda r: r["rel_l2"], default=None)
    summary = (f" (worst rel L2 {worst['rel_l2']:.2e}, min cosine "
               f"{min(r['cosine'] for r in gated):.5f})" if worst else "")
    summary += "".join(f"; {name} reported, not gated (int8 below {INT8_MIN_SIDE} px a side): rel L2 "
                       f"{r['rel_l2']:.3f}, min cosine {r['cosine']:.4f}"
                       for name, r in entry.cases.items() if not r.get("gated", True))
    log(f"  {entry.label}: {'ok' if entry.passed else 'FAIL'}{summary}"
        + "".join(f"\n    {f}" for f in entry.failures) + (f"\n    {entry.where}" if entry.where else ""))


def write_parity_files(root: Path, report: ParityReport) -> None:
    """parity.json, and JUnit XML: per artifact and reader, a test case per input case and one
    for what concerns the artifact as a whole (loading, readers' agreement, fallback target)."""
    write_text_atomic(root / "parity.json", json.dumps(report.to_json(), indent=2) + "\n")
    suite = ET.Element("testsuite", name=f"parity-{report.variant}")
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    for artifact in report.artifacts:
        whole = ET.SubElement(suite, "testcase", classname=artifact.label, name="artifact")
        counts["tests"] += 1
        if artifact.skipped:
            ET.SubElement(whole, "skipped", message=artifact.skipped)
            counts["skipped"] += 1
        general = [f for f in artifact.failures if f.split(": ")[0] not in artifact.cases]
        if general:
            ET.SubElement(whole, "failure", message="; ".join(general))
            counts["failures"] += 1
        for name, result in artifact.cases.items():
            case = ET.SubElement(suite, "testcase", classname=artifact.label, name=name)
            counts["tests"] += 1
            failed = [f for f in artifact.failures if f.startswith(f"{name}: ")]
            if failed:
                ET.SubElement(case, "failure", message="; ".join(failed)).text = json.dumps(result)
                counts["failures"] += 1
    for key, value in counts.items():
        suite.set(key, str(value))
    with atomic_path(root / "parity.junit.xml") as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)
