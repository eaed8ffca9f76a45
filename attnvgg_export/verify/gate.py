"""Stage: parity, the CI gate. Every artifact against eager PyTorch fp32, on held-out real
images and at shapes across the declared range (cases), against the budgets (budgets,
tolerances.toml), by the measures (measures), with each graph's structure checked (structure).

Running (attnvgg_export.runtime) and judging are separate; the gate verdict is data (ParityReport),
written to parity.json and parity.junit.xml, and the CLI turns it into an exit code."""

from __future__ import annotations

import json
import socket
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnvgg_export.manifest.lifecycle import invalidate_recommendation, recommendation_still_passes
from attnvgg_export.models import ConfigError
from attnvgg_export.report.report import publish
from attnvgg_export.verify.budgets import changed_budgets, load_tolerances
from attnvgg_export.verify.cases import ShapeCase
from attnvgg_export.verify.evaluate import EVAL_CASE, LabelledSet
from attnvgg_export.verify.explain import EXPLAIN_IMAGES, first_past, module_errors, write_explain_json
from attnvgg_export.verify.references import (
    REFERENCES_FILE,
    computed_apart,
    eager_references,
    read_references,
    write_references,
)
from attnvgg_export.verify.structure import static_violations
from attnvgg_runtime.files import atomic_path, write_text_atomic
from attnvgg_runtime.manifest import INT8_MIN_SIDE, Manifest, read_manifest, verify_artifacts
from attnvgg_runtime.readers import release_memory
from attnvgg_runtime.readers.cpu import cpu_identity
from attnvgg_runtime.readers.emulated import emulated_cpu
from attnvgg_runtime.verify.check import ArtifactParity, Case, check_artifact
from attnvgg_runtime.verify.findings import Finding
from attnvgg_runtime.verify.golden import write_golden


@dataclass
class ParityReport:
    variant: str
    trained: bool
    artifacts: list[ArtifactParity]
    heldout: dict = field(default_factory=dict)  # what the held-out set is, and its sha256
    shapes: list[str] = field(default_factory=list)
    budgets: dict = field(default_factory=dict)  # precision -> the effective budget
    cpu: dict = field(default_factory=cpu_identity)  # the kernels' CPU: model, ISA, emulated
    budgets_changed: list[str] = field(default_factory=list)  # keys a user's file changed
    evaluation: dict | None = None  # EVAL_DIR: what the labelled set was
    strict_accuracy: bool = False  # "not resolvable" on EVAL_DIR fails too

    @property
    def verified(self) -> int:
        """Readings made and judged here (not skipped)."""
        return sum(1 for a in self.artifacts if not a.skipped)

    @property
    def passed(self) -> bool:
        """Every reading passed, and there was at least one: a gate that read nothing proves
        nothing and does not pass."""
        return self.verified > 0 and all(a.passed for a in self.artifacts)

    def warnings(self) -> list[str]:
        """What passed without being proven: accuracy these images cannot resolve, readings
        measured but not gated on this CPU."""
        return [f"{a.label}: {w}" for a in self.artifacts for w in a.warnings]

    def failures(self) -> list[str]:
        found = [f"{a.label}: {f}" + (f"; {a.where}" if a.where else "")
                 for a in self.artifacts for f in a.failures]
        if not self.verified:
            found.append(f"nothing was verified: {len(self.artifacts)} readings, every one skipped "
                         f"on this machine ({'; '.join(self.skipped()) or 'no artifact was read'})")
        return found

    def failure_records(self) -> list[dict]:
        """Every failed check, with the artifact and reader it is about (the manifest's record)."""
        return [{"path": a.path, "reader": a.reader, **f.to_json()}
                for a in self.artifacts for f in a.failures]

    def skipped(self) -> list[str]:
        return [f"{a.label}: {a.skipped}" for a in self.artifacts if a.skipped]

    def verdicts(self) -> list[dict]:
        """Per artifact and reader, the verdict and what it is bound to: the bytes (sha256), the
        reader and its version. A skipped entry is no passing verdict."""
        return [{"path": a.path, "sha256": a.sha256, "reader": a.reader,
                 "reader_version": a.reader_version, "passed": a.passed and not a.skipped,
                 "skipped": a.skipped} for a in self.artifacts]

    def to_json(self) -> dict:
        return {"variant": self.variant, "trained_weights": self.trained, "passed": self.passed,
                "heldout": self.heldout, "shapes": self.shapes, "emulated_cpu": emulated_cpu(),
                "cpu": self.cpu, "budgets": self.budgets, "budgets_changed": self.budgets_changed,
                "not_verified": self.skipped(), "warnings": self.warnings(),
                "evaluation": self.evaluation,
                "strict_accuracy": self.strict_accuracy,
                "artifacts": [a.to_json() for a in self.artifacts]}


FALLBACK_ARTIFACTS = {"int8-trt": ("model.int8-trt.onnx",),
                      "int8-cpu": ("model.int8-cpu.onnx", "engines/ort/model.int8-cpu.ort")}


def built_here(manifest: Manifest) -> bool:
    """Whether this machine built the manifest's TensorRT plans: then a gate that cannot run them
    (no GPU visible) fails rather than skips. A build copied from a GPU machine skips them."""
    return ((manifest.backend or {}).get("used") == "tensorrt"
            and (manifest.tensorrt or {}).get("host", socket.gethostname()) == socket.gethostname())


@dataclass
class GateInputs:
    """What one gate run judges: the build, its budgets, its cases with eager's outputs, and
    EVAL_DIR where given (read and checked by gate_inputs, before anything is measured)."""
    root: Path
    manifest: Manifest
    budgets: dict
    changed: list[str]  # budget keys a user's file changed
    trained: bool
    heldout: dict  # what the held-out set is: images, distinct_sources, source, ids_sha256
    cases: dict[str, ShapeCase]
    whole: bool  # every case, artifact and image: the run whose inputs become the golden I/O
    references: dict[str, np.ndarray]  # eager's outputs per case (eager itself is not kept: its
    # weights would sit beside every reader session; explain_graphs loads it again where needed)
    labelled: LabelledSet | None  # EVAL_DIR, each image identified
    built_rel_l2: dict[str, float]  # what the precision stage measured (drift)


def gate_inputs(manifest_path: Path, tolerances: Path | None, only: set[str] | None,
                cases: set[str] | None, eval_dir, images: int | None, log,
                thorough: bool = False) -> GateInputs:
    """The build read and refused where it cannot be judged (edited artifacts, a precision with
    no budget, an unknown case or artifact), and eager's outputs on every case: the stored ones
    where they are this model's (attnvgg_export.verify.references), else computed."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    verify_artifacts(manifest_path)  # missing or edited artifacts are refused before anything runs
    manifest = read_manifest(manifest_path)
    budgets = load_tolerances(manifest.variant, tolerances)
    missing = sorted({a.precision for a in manifest.artifacts} - set(budgets))
    if missing:
        raise ConfigError(f"no parity budget for precision {', '.join(missing)}: add a "
                          f"[precision.{missing[0]}] section to {tolerances or 'the tolerances'}")
    listed = {a.path for a in manifest.artifacts}
    if only and only - listed:
        raise ConfigError(f"no artifact {sorted(only - listed)} in {manifest_path}; it lists "
                          f"{', '.join(sorted(listed))}")
    stored = read_references(root, manifest) if images is None and not thorough else None
    computed = stored is None
    if computed:  # apart, so that torch and eager's heap stay out of this process; where torch is
        # here already (a library user's process, the tests), a child would only add its start
        if "torch" in sys.modules:
            stored = eager_references(manifest, images, cases, thorough)
            release_memory()  # eager's model and batches, before the first reader session
        else:
            stored = computed_apart(manifest_path, images, cases, thorough)
    unknown = (cases or set()) - set(stored.cases)
    if unknown:
        raise ConfigError(f"no shape case {sorted(unknown)} in this build; its cases: "
                          f"{', '.join(stored.cases)}")
    chosen = {name: case for name, case in stored.cases.items()  # held-out: drift, errors, explain
              if cases is None or name in cases | {"heldout"}}
    whole = len(chosen) == len(stored.cases) and only is None and images is None
    if computed and images is None and not thorough and set(stored.references) == set(stored.cases):
        write_references(root, manifest, stored)  # the next gate on this model reads them
    log("eager PyTorch fp32's outputs: " + ("computed" if computed else
        f"read from {root / REFERENCES_FILE} (this model's, by its key and sha256)"))
    labelled = None
    if eval_dir:  # the user's labelled images, read after the parity readings (evaluate.py)
        from attnvgg_export.verify.evaluate import labelled_set
        labelled = labelled_set(eval_dir, manifest, root, log=log)
    # the precision stage measured each graph with ONNX Runtime on every held-out image; drift is
    # judged against that (not on a subset of the images, whose figure is another)
    built = {r["path"]: r["rel_l2"] for r in manifest.parity.get("heldout-vs-eager", {}).values()
             if "rel_l2" in r} if images is None else {}
    return GateInputs(root, manifest, budgets, changed_budgets(manifest.variant, tolerances),
                      manifest.trained, stored.heldout, chosen, whole,
                      {name: stored.references[name] for name in chosen}, labelled, built)


def measure(inputs: GateInputs, only: set[str] | None,
            plan_code_allowed: bool = False) -> tuple[list[ArtifactParity], dict]:
    """Every artifact (or those in ``only``) under each of its readers, on every case, judged by
    its budget: the box's per-artifact check (attnvgg_runtime.verify.check). Returns the
    readings and the held-out outputs by label."""
    checked = {name: Case(case.images, case.batch, inputs.references[name], case.labels, case.sources,
                          case.int8_gated, case.float_images) for name, case in inputs.cases.items()}
    results, outputs = [], {}
    for artifact in inputs.manifest.artifacts:
        if only is None or artifact.path in only:
            results += check_artifact(artifact, inputs.root, inputs.manifest, checked,
                                      inputs.budgets[artifact.precision], inputs.trained, outputs,
                                      inputs.built_rel_l2.get(artifact.path),
                                      plan_code_allowed=plan_code_allowed)
    return results, outputs


def judge_build(inputs: GateInputs, results: list[ArtifactParity]) -> None:
    """What concerns an artifact as a whole rather than a reading of it, added to its readings'
    findings: the graph's structure (TensorRT's Q/DQ rules, fp16 cast islands), plans this machine
    built but cannot run, a layer fallback that missed its target."""
    manifest, seen = inputs.manifest, set()
    missed = {target: report for target, report in
              (manifest.calibration or {}).get("fallback", {}).items() if not report["met"]}
    for entry in results:
        artifact = manifest.artifact(entry.path)
        if entry.path not in seen:  # once per artifact, on its first reading
            seen.add(entry.path)
            entry.failures += [Finding("structure", v)
                               for v in static_violations(inputs.root / artifact.path, artifact)]
        if entry.skipped and entry.reader == "tensorrt" and built_here(manifest):
            entry.failures.append(Finding(
                "gpu_visible", f"cannot be verified: {entry.skipped}; but this machine built the plans "
                f"(backend.used tensorrt): its GPU must be visible to the gate "
                f"(CUDA_VISIBLE_DEVICES, the driver)"))
            entry.skipped = None
        for target, report in missed.items():
            if artifact.path in FALLBACK_ARTIFACTS[target]:
                entry.failures.append(Finding(
                    "fallback_target", f"the layer fallback missed its target: {report['metric']} "
                    f"{report['final']:.4f} < {report['goal']} on the tuning set",
                    measured=report["final"], budget=report["goal"]))


def record(inputs: GateInputs, results: list[ArtifactParity], strict_accuracy: bool,
           evaluation: dict | None = None) -> ParityReport:
    return ParityReport(inputs.manifest.variant, inputs.trained, results, inputs.heldout,
                        [shape for name, case in inputs.cases.items()  # every shape it proved
                         for shape in (name, case.stands_for) if shape],
                        {p: inputs.budgets[p] for p in sorted({a.precision for a in results})},
                        budgets_changed=inputs.changed,
                        evaluation=evaluation,
                        strict_accuracy=strict_accuracy)


def publish_gate(inputs: GateInputs, report: ParityReport, outputs: dict, log) -> None:
    """Everything the run wrote, once: parity.json and its JUnit file, the golden I/O (a whole run's
    inputs), the manifest's gate record (and the recommendation dropped where it names what this
    run did not pass), then report.md and the manifest (report.publish)."""
    root, manifest = inputs.root, inputs.manifest
    errors = {label: (out - inputs.references["heldout"]).ravel()
              for label, out in outputs.items() if out is not None}
    write_parity_files(root, report, error_histograms(errors))
    if inputs.whole:  # the whole gate: its inputs travel with it, for the box to re-check
        manifest.golden = write_golden(root, inputs.cases, inputs.references) | {
            "trained_weights": inputs.trained,
            "budgets": {p: inputs.budgets[p] for p in sorted({a.precision for a in manifest.artifacts})}}
    manifest.parity["gate"] = {"passed": report.passed, "failures": report.failure_records(),
                               "skipped": report.skipped(), "warnings": report.warnings(),
                               "verdicts": report.verdicts(), "cpu": report.cpu, "budgets": report.budgets,
                               "budgets_changed": inputs.changed, "file": "parity.json",
                               "junit": "parity.junit.xml"}
    if not recommendation_still_passes(manifest):  # it was chosen by the previous verdicts
        removed = invalidate_recommendation(root, manifest)
        log(f"  the speed recommendation names an artifact this run did not pass; removed "
            f"{', '.join(removed)} (`make bench` chooses again)")
    publish(root, manifest)


def run_parity(manifest_path: Path, tolerances: Path | None = None, log=print,
               only: set[str] | None = None, cases: set[str] | None = None,
               eval_dir: str | Path | None = None, strict_accuracy: bool = False,
               images: int | None = None, thorough: bool = False,
               cluster: str | None = None, plan_code_allowed: bool = False) -> ParityReport:
    """The gate: read the build (gate_inputs), measure every reading against its budget
    (measure), judge what concerns an artifact as a whole (judge_build), record the verdict
    (record), explain the failing graphs, publish every file once (publish_gate).

    ``only``: check just these artifact paths (the self-test's planted bugs); ``cases``: just these
    shape cases (the emulated run of `make test-isa`, where every kernel runs ~30 times slower).
    The verdict then covers only them. ``eval_dir``: EVAL_DIR, labelled images on which every
    artifact's accuracy drop is judged with its interval (attnvgg_export.verify.evaluate);
    ``strict_accuracy``: a drop that those images cannot resolve fails too (by default it is a
    warning, and fails only where it is over budget). ``images``: only the first N held-out images
    (the corners follow them): what fits an emulated CPU in CI (`make test-isa`); the verdict then
    covers only them. ``thorough``: every graph on every image of every corner, the max batch a
    corner of its own, and eager run again (attnvgg_export.verify.cases.shape_cases): slower,
    the same verdicts (tests/verify/test_gate_cost.py). ``cluster``: where EVAL_DIR is read, "local"
    (a local Ray cluster) or a Ray address (attnvgg_export.verify.cluster); None: in this process.
    ``plan_code_allowed``: TensorRT plans may run the host code they embed (version-compatible
    plans), as the person running the gate asked (--allow-plan-code); never by the manifest."""
    inputs = gate_inputs(manifest_path, tolerances, only, cases, eval_dir, images, log, thorough)
    _log_plan(inputs, tolerances, log)
    results, outputs = measure(inputs, only, plan_code_allowed)
    evaluation = None
    if inputs.labelled:
        from attnvgg_export.verify.evaluate import evaluate_gate_readings

        evaluation = evaluate_gate_readings(Path(manifest_path), inputs.manifest, inputs.labelled, results,
                                            cluster, strict_accuracy, log)
    judge_build(inputs, results)
    exact = {a.path for a in inputs.manifest.artifacts if a.exact_int8_session_options is not None}
    # a frame graph is the graph it wraps behind its preprocessing: that one is explained
    frames = {a.path for a in inputs.manifest.artifacts if a.input is not None}
    explain_graphs([r for r in results if r.path not in frames], inputs.root,
                   lambda: _eager_model(inputs.manifest), inputs.cases, inputs.budgets, log, exact)
    for entry in results:
        _log_entry(entry, log)
    report = record(inputs, results, strict_accuracy, evaluation)
    publish_gate(inputs, report, outputs, log)
    return report


def _eager_model(manifest: Manifest):
    from attnvgg_export.runtime.eager import model_from_manifest  # torch: imported where eager runs

    return model_from_manifest(manifest)


def _log_plan(inputs: GateInputs, tolerances: Path | None, log) -> None:
    if inputs.changed:
        log(f"budgets from {tolerances} that differ from the defaults: {'; '.join(inputs.changed)}")
    if emulated_cpu():
        log(f"readers run as an emulated {emulated_cpu()} CPU (qemu-x86_64; "
            f"attnvgg_runtime.readers.emulated)")
    heldout, cases = inputs.heldout, inputs.cases
    log(f"parity against eager PyTorch fp32 on {heldout['images']} held-out images from "
        f"{heldout['distinct_sources']} distinct sources ({heldout['source']}; "
        f"never used for calibration or tuning) and at {len(cases) - 1} corner shapes "
        f"({', '.join(f'{n} on {len(c.images)} images' for n, c in list(cases.items())[1:])}; "
        f"int8 gated where every side is at least {INT8_MIN_SIDE} px); "
        + ("trained weights: top-1/top-5 budgets apply" if inputs.trained else
           "random-init weights: top-1/top-5 reported, not gated"))


def explain_graphs(results: list[ArtifactParity], root: Path, load_model, cases: dict[str, ShapeCase],
                   budgets: dict, log, exact: set[str] = frozenset()) -> dict:
    """Module-by-module error (attnvgg_export.explain) of every reduced-precision graph on held-out
    images, for the report, and of every failing graph on the images of the case it fails first,
    whose failure then names the module where the error first grows past its budget.
    ``load_model``: eager PyTorch fp32, loaded on first use (after every reader session is gone)."""
    explained, model = {}, None
    for entry in results:
        graph = entry.path.endswith(".onnx") and entry.reader == "onnxruntime"
        if not graph or (entry.precision == "fp32" and entry.passed) or entry.skipped:
            continue
        try:
            model = model or load_model()
            explained[entry.path] = module_errors(root / entry.path, model,
                                                  cases["heldout"].images[:EXPLAIN_IMAGES],
                                                  exact_int8=entry.path in exact)
            release_memory()  # its session, with every module's output, is gone
            if entry.passed:
                continue
            failing = next((name for name in cases if any(f.case == name for f in entry.failures)),
                           "heldout")
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


def error_histograms(errors: dict[str, np.ndarray]) -> dict:
    """|artifact - eager| per logit, counted in shared log-spaced bins, one row per reader of an
    artifact: what parity.json keeps, and the report plots (the report reads files only)."""
    finite = {k: np.abs(v[np.isfinite(v)]) for k, v in errors.items()}
    top = max((float(v.max()) for v in finite.values() if v.size), default=1.0)
    edges = np.logspace(-12, np.log10(max(top, 1e-11)) + 0.1, 60)
    return {"edges": edges.tolist(),
            "counts": {k: np.histogram(np.maximum(v, 1e-12), edges)[0].tolist()
                       for k, v in finite.items()}}


def write_parity_files(root: Path, report: ParityReport, histograms: dict | None = None) -> None:
    """parity.json (with the error histograms the report plots), and JUnit XML: per artifact and
    reader, a test case per input case and one for what concerns the artifact as a whole
    (loading, readers' agreement, fallback target)."""
    data = report.to_json() | ({"error_histograms": histograms} if histograms else {})
    write_text_atomic(root / "parity.json", json.dumps(data, indent=2) + "\n")
    suite = ET.Element("testsuite", name=f"parity-{report.variant}")
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    if not report.verified:  # a gate that read nothing fails, in JUnit too
        ET.SubElement(ET.SubElement(suite, "testcase", classname="parity", name="anything verified"),
                      "failure", message=report.failures()[-1])
        counts["tests"] += 1
        counts["failures"] += 1
    for artifact in report.artifacts:
        whole = ET.SubElement(suite, "testcase", classname=artifact.label, name="artifact")
        counts["tests"] += 1
        if artifact.warnings:  # passed, not proven: shown by a CI dashboard without parity.json
            properties = ET.SubElement(whole, "properties")
            for warning in artifact.warnings:
                ET.SubElement(properties, "property", name="warning", value=warning)
        if artifact.skipped:
            ET.SubElement(whole, "skipped", message=artifact.skipped)
            counts["skipped"] += 1
        accuracy = [str(f) for f in artifact.failures if f.case == EVAL_CASE]
        general = [str(f) for f in artifact.failures if f.case is None]
        if general:
            ET.SubElement(whole, "failure", message="; ".join(general))
            counts["failures"] += 1
        if artifact.warnings:
            ET.SubElement(whole, "system-out").text = "".join(f"WARNING: {w}\n" for w in artifact.warnings)
        if artifact.accuracy is not None:
            case = ET.SubElement(suite, "testcase", classname=artifact.label, name="accuracy")
            counts["tests"] += 1
            if accuracy:
                ET.SubElement(case, "failure", message="; ".join(accuracy))
                counts["failures"] += 1
        for name, result in artifact.cases.items():
            case = ET.SubElement(suite, "testcase", classname=artifact.label, name=name)
            counts["tests"] += 1
            failed = [str(f) for f in artifact.failures if f.case == name]
            if failed:
                ET.SubElement(case, "failure", message="; ".join(failed)).text = json.dumps(result)
                counts["failures"] += 1
    for key, value in counts.items():
        suite.set(key, str(value))
    with atomic_path(root / "parity.junit.xml") as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)
