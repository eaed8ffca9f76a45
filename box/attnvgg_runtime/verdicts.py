"""Whether an artifact may be run as verified: the build's gate verdict for its current bytes
(the manifest's ``parity.gate.verdicts``) and, where this box re-checked it, the box's own
(verify.json, attnvgg_runtime.verify.on_box) for the same bytes on the same CPU."""

from __future__ import annotations

import json
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.manifest import Artifact, Manifest

VERIFY_JSON = "verify.json"
VERIFY_FORMAT = 2  # 1: one run's results, the CPU at the top; 2: every run's, newest first
HISTORY_PER_KEY = 20  # results kept per (path, sha256, reader and version, CPU)


def reader_of(artifact: Artifact, runtime: str) -> str:
    """The gate's name for ``runtime`` reading ``artifact`` (the bf16 entry is "openvino-bf16")."""
    bf16 = artifact.runtime_options.get("INFERENCE_PRECISION_HINT") == "bf16"
    return "openvino-bf16" if runtime == "openvino" and bf16 else runtime


def gate_unverified_reason(manifest: Manifest, artifact: Artifact, reader: str) -> str | None:
    """Why the build's gate did not pass ``artifact`` under ``reader`` for the bytes the manifest
    lists now (its sha256), or None where it did (manifest schema 1.3: parity.gate.verdicts)."""
    gate = (manifest.parity or {}).get("gate")
    if not gate or "verdicts" not in gate:
        return "the build's gate has not run on these artifacts (`make parity`)"
    mine = [v for v in gate["verdicts"] if v["path"] == artifact.path and v["reader"] == reader]
    if not mine:
        return f"the gate has no verdict for it under {reader}"
    current = [v for v in mine if v["sha256"] == artifact.sha256]
    if not current:
        return "the gate judged other bytes than the manifest lists now"
    if any(v["passed"] and not v.get("skipped") for v in current):
        return None
    skipped = next((v["skipped"] for v in current if v.get("skipped")), None)
    return f"the gate did not verify it ({skipped})" if skipped else "it FAILED the gate"


def reading_key(result: dict) -> tuple:
    """What a box's result is about: the bytes, the reader and its version, the CPU."""
    return (result["path"], result["sha256"], result["reader"], result.get("reader_version", ""),
            result.get("cpu", ""))


def read_box_history(root: Path) -> list[dict]:
    """This box's verify results beside the manifest, newest first (format 1 files read as one
    run); [] where verify has not run. A file that is not JSON is an error, never "no verdict":
    a FAIL it held must not be forgotten."""
    path = Path(root) / VERIFY_JSON
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as e:
        raise ToolchainError(f"{path} cannot be read ({e}): it holds this box's verdicts; repair it, "
                             f"or delete it and run `attnvgg-runtime verify` again") from e
    if report.get("format", 1) == 1:  # one run: the CPU and the restriction at the top
        cpu = report.get("cpu", {}).get("model", "")
        return [r | {"cpu": cpu, "restricted": report.get("restricted")} for r in report.get("results", [])]
    return report["results"]


def merge_history(history: list[dict], run: list[dict]) -> list[dict]:
    """A run's results before the history, keeping HISTORY_PER_KEY per key: a restricted run
    adds, and never removes what another run found."""
    kept, counts = [], {}
    for result in run + history:
        key = reading_key(result)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= HISTORY_PER_KEY:
            kept.append(result)
    return kept


def box_verdict(root: Path, artifact: Artifact, reader: str, cpu_model: str) -> dict | None:
    """This box's own latest verdict on ``artifact`` under ``reader`` (verify.json beside the
    manifest), reached for these bytes on a CPU of this model, whatever run reached it and
    whatever the reader's version: {"passed": bool, "file", "when", "reader_version",
    "restricted"}; None where the box has not checked it."""
    for r in read_box_history(root):  # newest first
        if (r["path"] == artifact.path and r["reader"] == reader and r["sha256"] == artifact.sha256
                and r.get("cpu") == cpu_model and r.get("unread") is None):
            return {"passed": r["passed"], "file": str(Path(root) / VERIFY_JSON), "when": r.get("when"),
                    "reader_version": r.get("reader_version"), "restricted": r.get("restricted")}
    return None
