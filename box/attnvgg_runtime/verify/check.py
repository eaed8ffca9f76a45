"""One artifact under every reader that judges it, against eager's outputs and against each other:
the per-artifact check that the gate (attnvgg_export.verify.gate, on the build machine) and the target
box's verifier (attnvgg_runtime.verify.on_box, from the golden I/O, without torch) both run.

- each reader, each case: the measures against eager (attnvgg_runtime.verify.measures) judged by the
  budget (attnvgg_runtime.verify.budgets);
- the readers of one graph against each other (``agreement_max``, or for int8
  ``agreement_factor`` times the readers' own error against eager);
- a converted file (.ort, IR) against the same conversion done again from its source on this box
  (``derived_max``: the same bytes of weights and the same kernels compute the same numbers, so a
  damaged file cannot hide in rounding noise), and no farther from eager than its source
  (``derived_excess_max``); a TensorRT plan against ONNX Runtime's reading of its source, as a
  second reader of that graph.
Every verdict records its margin (allowed / measured; below 1 is a breach) in ``checks``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from attnvgg_runtime.errors import ReaderUnavailable
from attnvgg_runtime.manifest import Artifact, Manifest
from attnvgg_runtime.readers import reader_version, release_memory, run_batches
from attnvgg_runtime.readers.emulated import emulated_cpu
from attnvgg_runtime.verify.budgets import DRIFT_FLOOR, breaches, budget_margin, heldout_accuracy
from attnvgg_runtime.verify.findings import Finding, error_margin
from attnvgg_runtime.verify.measures import metrics, relative_l2
from attnvgg_runtime.verify.readers import (
    not_gated_here,
    readers_of,
    reconversion_runner,
    reconversion_words,
    runner_for,
)


@dataclass(frozen=True)
class Case:
    """Inputs at one shape, eager's outputs for them, and whether int8 is gated there."""
    images: np.ndarray
    batch: int
    reference: np.ndarray
    labels: np.ndarray | None = None
    sources: int = 0  # independent images behind it, where counted
    int8_gated: bool = True
    float_images: int | None = None  # how many of them a float graph reads (None: all)

    def gates(self, precision: str) -> bool:
        return precision != "int8" or self.int8_gated

    def read_by(self, precision: str) -> Case:
        """The images a graph of ``precision`` reads here: all of them for int8, whose error is
        an aggregate over pixels; the first ``float_images`` for a float graph, whose error at a
        corner is proven image by image (attnvgg_export.verify.cases.FLOAT_CORNER_IMAGES)."""
        count = self.float_images
        if precision == "int8" or count is None or count >= len(self.images):
            return self
        labels = None if self.labels is None else self.labels[:count]
        return replace(self, images=self.images[:count], reference=self.reference[:count],
                       labels=labels, sources=min(self.sources, count), float_images=None)


@dataclass
class ArtifactParity:
    path: str
    precision: str
    reader: str = "onnxruntime"  # the runtime that ran it: onnxruntime, openvino, tensorrt
    cases: dict[str, dict] = field(default_factory=dict)  # case name -> metrics
    failures: list[Finding] = field(default_factory=list)  # the checks it failed, as records
    skipped: str | None = None  # what this machine cannot compute: reported, not passed
    not_gated: str | None = None  # measured and reported, not judged here, and why (readers.not_gated_here)
    where: str | None = None  # for a failing graph: the module where its error passes the budget
    sha256: str = ""  # the bytes the verdict is about (the manifest's record, checked before)
    reader_version: str = ""  # the library that computed it, e.g. "onnxruntime-gpu 1.31.1"
    budget: dict = field(default_factory=dict)  # the effective budget it was held to
    accuracy: dict | None = None  # on EVAL_DIR: the paired drop against eager, its interval
    checks: dict[str, dict] = field(default_factory=dict)  # check -> measured, allowed, margin
    warnings: list[str] = field(default_factory=list)  # passed, but not proven: said wherever it passes

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def label(self) -> str:
        return f"{self.path} [{self.reader}]"

    @property
    def margin(self) -> float | None:
        """The smallest margin of its checks (allowed / measured; below 1 is a breach), None
        where every check measured exactly nothing."""
        return min((c["margin"] for c in self.checks.values() if c["margin"] is not None),
                   default=None)

    def record(self, name: str, measured: float, allowed: float) -> bool:
        """One check's figure, budget and margin (None where it measured exactly 0); whether it
        passed."""
        self.checks[name] = {"measured": measured, "allowed": allowed,
                             "margin": allowed / measured if measured > 0 else None}
        return measured <= allowed

    def to_json(self) -> dict:
        return self.__dict__ | {"failures": [f.to_json() for f in self.failures], "passed": self.passed,
                                "margin": self.margin}


def check_reading(artifact: Artifact, reader: str, root: Path, manifest: Manifest, cases: dict[str, Case],
                  budget: dict, trained: bool, built: float | None = None,
                  outputs: dict | None = None,
                  plan_code_allowed: bool = False) -> tuple[ArtifactParity, Callable | None]:
    """``artifact`` under ``reader`` on every case: (its verdict, the runner for more). Held-out
    outputs go into ``outputs`` under the entry's label. ``built``: the rel L2 the build measured
    on the held-out case (drift). ``plan_code_allowed``: a TensorRT plan may run host code it
    embeds (version-compatible plans), as whoever runs the check asked (--allow-plan-code)."""
    version = reader_version(reader) + (f" (emulated {emulated_cpu()})" if emulated_cpu() else "")
    entry = ArtifactParity(artifact.path, artifact.precision, reader, sha256=artifact.sha256,
                           reader_version=version, budget=budget)
    try:
        runner = runner_for(artifact, root, manifest, reader, plan_code_allowed=plan_code_allowed)
    except ReaderUnavailable as e:  # this machine cannot compute it: reported, not passed
        entry.skipped = str(e).splitlines()[0]
        return entry, None
    except Exception as e:  # any other artifact that does not load fails
        entry.failures.append(Finding("loads", f"cannot be loaded: {type(e).__name__}: "
                                              f"{str(e).strip()[:300]}"))
        return entry, None
    entry.not_gated = not_gated_here(artifact, reader)
    if entry.not_gated:
        entry.warnings.append(f"measured, not gated here: {entry.not_gated}")
    for name, case in cases.items():
        case = case.read_by(artifact.precision)
        try:
            result_outputs = run_batches(runner, case.images, case.batch)
        except Exception as e:  # a runtime error at a declared shape is a breach, not a crash
            entry.failures.append(Finding("runs", f"fails to run: {str(e).strip().splitlines()[-1][:240]}",
                                          case=name))
            continue
        if name == "heldout" and outputs is not None:
            outputs[entry.label] = result_outputs
        result = metrics(result_outputs, case.reference, case.labels) | (
            {"sources": case.sources} if case.sources else {})
        entry.cases[name] = result
        if not case.gates(artifact.precision) or entry.not_gated:
            result["gated"] = False  # measured and reported; see ShapeCase.gates
            continue
        margin = budget_margin(result, budget, trained)  # the tightest of the case's budgets
        if name == "heldout" and built is not None and "drift_max" in budget:
            entry.record("drift from the build's figure", result["rel_l2"] - built,
                         built * budget["drift_max"] + DRIFT_FLOOR)
        entry.checks[f"{name} against eager"] = {"margin": margin if margin != float("inf") else None}
        entry.failures += [b.in_case(name) for b in breaches(
            result, budget, trained, built if name == "heldout" else None)]
        accuracy = heldout_accuracy(result, budget)
        if accuracy and accuracy["warning"] and name == "heldout":  # corners: failures only
            entry.warnings.append(f"{name}: {accuracy['warning']}")
    return entry, runner


def reader_disagreement(entries: list[ArtifactParity], outputs: dict, budget: dict) -> Finding | None:
    """Two readers of one graph that compute different things: past ``agreement_max`` (fp32,
    fp16: far tighter than the budget against eager), or for int8 past ``agreement_factor`` times
    the smaller of the two readers' own rel L2 against eager (two correct readers of one int8
    graph round differently at every requantization, and differ by up to 0.75 of their own int8
    error: docs/precision.md). Recorded on the last reader."""
    read = [e for e in entries if e.label in outputs and "heldout" in e.cases and not e.not_gated]
    if len(read) < 2:
        return None
    first, second = read[0], read[1]
    between = relative_l2(outputs[first.label], outputs[second.label])
    for entry in read:  # recorded beside each reader's held-out figures
        entry.cases["heldout"]["rel_l2_between_readers"] = between
    if "agreement_factor" in budget:
        own = min(e.cases["heldout"]["rel_l2"] for e in read)
        allowed, basis = budget["agreement_factor"] * own + DRIFT_FLOOR, (
            f"{budget['agreement_factor']:g} x the smaller reader's rel L2 against eager {own:.4g}")
    else:
        allowed = budget.get("agreement_max", budget.get("rel_l2_max", float("inf")))
        basis = f"agreement budget {allowed:.4g}"
    if second.record("readers agree", between, allowed):
        return None
    check = "agreement_factor" if "agreement_factor" in budget else "agreement_max"
    return Finding(check, f"readers disagree: {first.reader} and {second.reader} differ by rel L2 "
                   f"{between:.4g} on the held-out images (allowed {allowed:.4g}: {basis}); one of "
                   f"them does not compute what the graph says (see docs/precision.md)",
                   measured=between, budget=allowed, margin=error_margin(between, allowed))


def derived_difference(entry: ArtifactParity, artifact: Artifact, ours: np.ndarray | None,
                       reconverted: np.ndarray | None, source: dict | None, budget: dict) -> list[Finding]:
    """A converted artifact's held-out outputs (``ours``) against the same conversion done again
    on this box (``reconverted``), and its source's held-out measures against eager (``source``:
    the metrics of the source graph under the same reader) against its own."""
    found = []
    if ours is None:
        return found
    if reconverted is not None:  # on the first held-out images, as many as were reconverted
        between = relative_l2(ours[:len(reconverted)], reconverted)
        entry.cases["heldout"]["rel_l2_vs_reconverted"] = between
        entry.cases["heldout"]["reconverted_images"] = len(reconverted)
        # a frame artifact: its preprocessing's rounding against numpy's (frame_max)
        check = "frame_max" if artifact.input is not None else "derived_max"
        allowed = budget.get(check, 1e-5)
        why = ("its preprocessing is not the manifest's (mean, std, channel order, layout)"
               if artifact.input is not None else "the file is not what its conversion makes")
        if not entry.record("the frame's preprocessing" if artifact.input is not None
                            else "the conversion redone", between, allowed):
            found.append(Finding(
                check, f"differs from {reconversion_words(artifact)} ({artifact.source}) by rel L2 "
                f"{between:.4g} on the first {len(reconverted)} held-out images ({check} "
                f"{allowed:.4g}): {why}", measured=between, budget=allowed,
                margin=error_margin(between, allowed)))
    if source is not None and "derived_excess_max" in budget:
        excess = budget["derived_excess_max"]
        mine = entry.cases["heldout"]
        for key, name in (("rel_l2", "rel L2"), ("rel_l2_image", "worst image's rel L2")):
            # the check's figure is the excess over the source, so that its margin reads as the
            # room left for the conversion's own error (None where it added none)
            allowed = excess * source[key] + DRIFT_FLOOR
            if not entry.record(f"no farther from eager than its source ({name})",
                                mine[key] - source[key], allowed):
                found.append(Finding(
                    "derived_excess_max", f"farther from eager than {artifact.source}, the graph "
                    f"it was converted from: {name} {mine[key]:.4g} against {source[key]:.4g} (allowed "
                    f"{source[key] + allowed:.4g}: {100 * excess:g}% more): the conversion lost accuracy",
                    measured=mine[key] - source[key], budget=allowed,
                    margin=error_margin(mine[key] - source[key], allowed)))
    return found


def check_artifact(artifact: Artifact, root: Path, manifest: Manifest, cases: dict[str, Case], budget: dict,
                   trained: bool, outputs: dict, built: float | None = None,
                   with_runner: Callable | None = None,
                   readers: tuple[str, ...] | None = None,
                   plan_code_allowed: bool = False) -> list[ArtifactParity]:
    """``artifact`` under each of its readers (attnvgg_runtime.verify.readers), the readers against each
    other, and a converted artifact against its conversion redone here and against its source.
    ``outputs``: held-out outputs by label, shared across artifacts (a source graph is read
    before what was converted from it, else read here). ``with_runner(entry, runner)``: more
    checks on each loaded reader (the gate's EVAL_DIR). ``built`` applies to ONNX Runtime's
    reading (what the precision stage measured with). ``readers``: only these (a box's verify
    restricted to fit its time). ``plan_code_allowed``: see check_reading."""
    entries = []
    for reader in readers_of(artifact):
        if readers is not None and reader not in readers:
            continue
        entry, runner = check_reading(artifact, reader, root, manifest, cases, budget, trained,
                                      built if reader == "onnxruntime" else None, outputs,
                                      plan_code_allowed)
        if runner is not None and with_runner is not None:
            with_runner(entry, runner)
        entries.append(entry)
        del runner  # one reader session alive at a time: a full-size fp32 one holds ~1-2 GB
        release_memory()
    disagreement = reader_disagreement(entries, outputs, budget)
    if disagreement:
        entries[-1].failures.append(disagreement)
    if artifact.source is None or "heldout" not in cases:
        return entries
    heldout = cases["heldout"]
    for entry in entries:
        if entry.skipped or "heldout" not in entry.cases:
            continue
        if artifact.format == "plan":  # a second reader of its source graph
            theirs = _source_outputs(artifact.source, "onnxruntime", root, manifest, heldout, outputs)
            if theirs is not None:
                read = ArtifactParity(artifact.source, artifact.precision,
                                      cases={"heldout": metrics(theirs, heldout.reference)})
                pair = reader_disagreement([read, entry], outputs, budget)
                entry.failures += [pair] if pair else []
            continue
        try:  # an exact check (the same weights, the same kernels): one batch shows a difference
            reconverted = reconversion_runner(artifact, root, manifest, entry.reader)(
                heldout.images[:heldout.batch])
        except Exception as e:  # the conversion must be repeatable where the artifact runs
            entry.failures.append(Finding(
                "reconversion", f"its conversion could not be redone here "
                f"({reconversion_words(artifact)}): {type(e).__name__}: {str(e).strip()[:240]}"))
            reconverted = None
        source = None  # its source's error against eager, under the same reader and precision
        # (not a frame artifact's: images not made of 8-bit pixels are rounded to become its
        # frames, which its source never sees; frame_max holds it to its source on the frames)
        if manifest.artifact(artifact.source).precision == artifact.precision and artifact.input is None:
            theirs = _source_outputs(artifact.source, entry.reader, root, manifest, heldout, outputs)
            source = None if theirs is None else metrics(theirs, heldout.reference)
        entry.failures += derived_difference(entry, artifact, outputs.get(entry.label), reconverted,
                                             source, budget)
    return entries


def _source_outputs(path: str, reader: str, root: Path, manifest: Manifest, heldout: Case,
                    outputs: dict) -> np.ndarray | None:
    """A source graph's held-out outputs under ``reader``: measured already, or now (a gate of
    one planted artifact); None, and kept as None in ``outputs``, where the source fails."""
    label = f"{path} [{reader}]"
    if label not in outputs:
        try:
            runner = runner_for(manifest.artifact(path), root, manifest, reader)
            outputs[label] = run_batches(runner, heldout.images, heldout.batch)
        except Exception:  # a source that fails has its own verdict; no comparison here
            outputs[label] = None
    return outputs[label]
