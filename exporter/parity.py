"""Stage: parity, the CI gate. Every artifact against eager PyTorch fp32, on held-out real
images and at shapes across the declared range, against the budgets in tolerances.toml.

Running (runners) and comparing (metrics) are separate; the gate verdict is data (ParityReport)
and the CLI turns it into an exit code."""

from __future__ import annotations

import importlib.resources
import json
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.data import load_calibration_data
from calibration.preprocessing import Preprocessing
from models import ConfigError

from .export import model_from_manifest
from .files import atomic_path, write_text_atomic
from .manifest import read_manifest, verify_artifacts, write_manifest
from .precision import run_batches
from .report import ERRORS_PNG, plot_error_histograms, write_report
from .runners import OnnxRuntimeRunner, run_torch

METRICS = ("rel_l2_max", "cosine_min", "top1_min", "top5_min", "accuracy_drop_max")
AGREEMENT_METRICS = ("top1_min", "top5_min")  # meaningful only for trained weights


def load_tolerances(variant: str, path: Path | None = None) -> dict[str, dict[str, float]]:
    """precision -> budget, with [variant.<name>.<precision>] overrides applied."""
    try:
        text = Path(path).read_text() if path else (
            importlib.resources.files("exporter") / "tolerances.toml").read_text()
        config = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read tolerances from {path or 'exporter/tolerances.toml'}: {e}") from None
    budgets = {p: dict(v) for p, v in config.get("precision", {}).items()}
    for precision, override in config.get("variant", {}).get(variant, {}).items():
        budgets.setdefault(precision, {}).update(override)
    for precision, budget in budgets.items():
        unknown = set(budget) - set(METRICS)
        if unknown:
            raise ConfigError(f"tolerances for {precision}: unknown keys {sorted(unknown)}; "
                              f"known: {', '.join(METRICS)}")
    return budgets


def metrics(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict:
    a, e = outputs.astype(np.float64), reference.astype(np.float64)
    finite = bool(np.isfinite(a).all())
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1), 1e-30)
    k = min(5, e.shape[1])
    top_a, top_e = np.argsort(-a, 1)[:, :k], np.argsort(-e, 1)[:, :k]
    result = {
        "finite": finite,
        "max_abs": float(np.abs(a - e).max()) if finite else float("inf"),
        "rel_l2": float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30)) if finite else float("inf"),
        "cosine": float(((a * e).sum(1) / norms).min()) if finite else 0.0,
        "top1": float(np.mean(a.argmax(1) == e.argmax(1))),
        "top5": float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_e, strict=True)])),
    }
    if labels is not None:
        result["accuracy"] = float(np.mean(a.argmax(1) == labels))
        result["accuracy_eager"] = float(np.mean(e.argmax(1) == labels))
    return result


def breaches(result: dict, budget: dict, trained: bool) -> list[str]:
    found = [] if result["finite"] else ["NaN or Inf in the outputs"]
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
        if key in budget and (trained or key not in AGREEMENT_METRICS) and not ok(value, budget[key]):
            found.append(f"{key.rsplit('_', 1)[0]} {value:.4g} (budget {budget[key]:.4g})")
    return found


@dataclass
class ArtifactParity:
    path: str
    precision: str
    cases: dict[str, dict] = field(default_factory=dict)  # case name -> metrics
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    variant: str
    trained: bool
    artifacts: list[ArtifactParity]

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def failures(self) -> list[str]:
        return [f"{a.path}: {f}" for a in self.artifacts for f in a.failures]

    def to_json(self) -> dict:
        return {"variant": self.variant, "trained_weights": self.trained, "passed": self.passed,
                "artifacts": [a.__dict__ | {"passed": a.passed} for a in self.artifacts]}


def runner_for(artifact: dict, root: Path):
    """ONNX Runtime on the CPU for ONNX/ORT files; TensorRT for plans (GPU machines)."""
    path = root / artifact["path"]
    if artifact["format"] == "plan":
        from .tensorrt_engine import TensorRTRunner

        return TensorRTRunner(path)
    return OnnxRuntimeRunner(path)


def parity_inputs(manifest: dict, calib_source: str | None, heldout: int, seed: int = 0):
    """Held-out real images at the opt size (with labels where the source has them), and the
    same held-out source preprocessed to shapes across the declared range."""
    def heldout_at(height: int, width: int, count: int):
        pre = Preprocessing.for_size(height, width)
        return load_calibration_data(calib_source, pre, calibration=16, heldout=count, seed=seed).heldout

    dyn = manifest["dynamic"]
    b, h, w = dyn["batch"], dyn["height"], dyn["width"]
    opt = heldout_at(h["opt"], w["opt"], heldout)
    cases = {"heldout": (opt.images, opt.labels)}
    for n, hh, ww in dict.fromkeys([(b["min"], h["min"], w["max"]), (min(b["max"], 4), h["max"], w["min"]),
                                    (min(b["max"], 2), h["max"], w["max"])]):
        cases[f"{n}x3x{hh}x{ww}"] = (heldout_at(hh, ww, n).images[:n], None)
    return cases, opt.source


def run_parity(manifest_path: Path, calib_source: str | None = None, heldout: int = 64,
               tolerances: Path | None = None, log=print) -> ParityReport:
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    verify_artifacts(manifest_path)  # missing or edited artifacts are refused before anything runs
    manifest = read_manifest(manifest_path)
    budgets = load_tolerances(manifest["variant"], tolerances)
    trained = bool(manifest["model"]["checkpoint"])
    cases, source = parity_inputs(manifest, calib_source, heldout)
    model = model_from_manifest(manifest)
    references = {name: run_batches(lambda x: run_torch(model, x), x) for name, (x, _) in cases.items()}
    log(f"parity against eager PyTorch fp32 on {len(cases['heldout'][0])} held-out images "
        f"({source}) and {len(cases) - 1} shapes; "
        + ("trained weights: top-1/top-5 budgets apply" if trained else
           "random-init weights: top-1/top-5 reported, not gated"))
    results, errors = [], {}
    for artifact in manifest["artifacts"]:
        entry = ArtifactParity(artifact["path"], artifact["precision"])
        results.append(entry)
        try:
            runner = runner_for(artifact, root)
        except Exception as e:  # a plan on a machine without TensorRT: say so, don't guess
            entry.skipped = str(e).splitlines()[0]
            log(f"  {artifact['path']}: skipped ({entry.skipped})")
            continue
        budget = budgets.get(artifact["precision"], {})
        for name, (x, labels) in cases.items():
            outputs = run_batches(runner, x)
            if name == "heldout":
                errors[artifact["path"]] = (outputs - references[name]).ravel()
            result = metrics(outputs, references[name], labels)
            entry.cases[name] = result
            entry.failures += [f"{name}: {b}" for b in breaches(result, budget, trained)]
        worst = max(entry.cases.values(), key=lambda r: r["rel_l2"])
        log(f"  {artifact['path']}: {'ok' if entry.passed else 'FAIL'} (worst rel L2 "
            f"{worst['rel_l2']:.2e}, min cosine {min(r['cosine'] for r in entry.cases.values()):.5f})"
            + "".join(f"\n    {f}" for f in entry.failures))
    report = ParityReport(manifest["variant"], trained, results)
    write_parity_files(root, report)
    plot_error_histograms(root / ERRORS_PNG, errors)
    manifest["parity"]["gate"] = {"passed": report.passed, "failures": report.failures(),
                                  "file": "parity.json", "junit": "parity.junit.xml"}
    write_manifest(manifest_path, manifest)
    write_report(root)
    return report


def write_parity_files(root: Path, report: ParityReport) -> None:
    write_text_atomic(root / "parity.json", json.dumps(report.to_json(), indent=2) + "\n")
    suite = ET.Element("testsuite", name=f"parity-{report.variant}",
                       tests=str(sum(max(1, len(a.cases)) for a in report.artifacts)),
                       failures=str(sum(len(a.failures) for a in report.artifacts)),
                       skipped=str(sum(a.skipped is not None for a in report.artifacts)))
    for artifact in report.artifacts:
        if artifact.skipped:
            case = ET.SubElement(suite, "testcase", classname=artifact.path, name="all")
            ET.SubElement(case, "skipped", message=artifact.skipped)
        for name, result in artifact.cases.items():
            case = ET.SubElement(suite, "testcase", classname=artifact.path, name=name)
            failed = [f for f in artifact.failures if f.startswith(f"{name}: ")]
            if failed:
                ET.SubElement(case, "failure", message="; ".join(failed)).text = json.dumps(result)
    with atomic_path(root / "parity.junit.xml") as tmp:
        ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)
