"""Whether an artifact may be run as verified: the build's gate verdict for its current bytes
(the manifest's ``parity.gate.verdicts``) and, where this box re-checked it, the box's own
(verify.json, attnvgg_runtime.verify.on_box) for the same bytes on the same CPU."""

from __future__ import annotations

import json
from pathlib import Path

VERIFY_JSON = "verify.json"


def reader_of(artifact: dict, runtime: str) -> str:
    """The gate's name for ``runtime`` reading ``artifact`` (the bf16 entry is "openvino-bf16")."""
    bf16 = artifact.get("runtime_options", {}).get("INFERENCE_PRECISION_HINT") == "bf16"
    return "openvino-bf16" if runtime == "openvino" and bf16 else runtime


def gate_unverified_reason(manifest: dict, artifact: dict, reader: str) -> str | None:
    """Why the build's gate did not pass ``artifact`` under ``reader`` for the bytes the manifest
    lists now (its sha256), or None where it did (manifest schema 1.3: parity.gate.verdicts)."""
    gate = (manifest.get("parity") or {}).get("gate")
    if not gate or "verdicts" not in gate:
        return "the build's gate has not run on these artifacts (`make parity`)"
    mine = [v for v in gate["verdicts"] if v["path"] == artifact["path"] and v["reader"] == reader]
    if not mine:
        return f"the gate has no verdict for it under {reader}"
    current = [v for v in mine if v["sha256"] == artifact["sha256"]]
    if not current:
        return "the gate judged other bytes than the manifest lists now"
    if any(v["passed"] and not v.get("skipped") for v in current):
        return None
    skipped = next((v["skipped"] for v in current if v.get("skipped")), None)
    return f"the gate did not verify it ({skipped})" if skipped else "it FAILED the gate"


def box_verdict(root: Path, artifact: dict, reader: str, cpu_model: str) -> dict | None:
    """This box's own verdict on ``artifact`` under ``reader`` (verify.json beside the manifest),
    where one was reached for these bytes on a CPU of this model: {"passed": bool, "when": ...};
    None where the box has not checked it."""
    path = Path(root) / VERIFY_JSON
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if report.get("cpu", {}).get("model") != cpu_model:
        return None  # another box's verdict (a folder copied between machines)
    for r in report.get("results", []):
        if (r["path"] == artifact["path"] and r["reader"] == reader and r["sha256"] == artifact["sha256"]
                and r.get("unread") is None):
            return {"passed": r["passed"], "file": str(path), "restricted": report.get("restricted")}
    return None
