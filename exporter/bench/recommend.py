"""Which artifact to ship, per target and batch size: the fastest that passed the gate."""

from __future__ import annotations

import json
from pathlib import Path


def gate_passed(root: Path) -> set[tuple[str, str]] | None:
    """(artifact, reader) pairs that passed the last `make parity`, or None if it has not run."""
    path = root / "parity.json"
    if not path.is_file():
        return None
    parity = json.loads(path.read_text())
    return {(a["path"], a.get("reader", "onnxruntime")) for a in parity["artifacts"]
            if a["passed"] and not a["skipped"]}


def recommend(results: dict, rows: dict, passed: set | None, batches) -> dict:
    """Per batch size and target, the fastest artifact that passed the gate."""
    chosen: dict = {}
    for batch in map(str, batches):
        for target in ("onnxruntime-cpu", "openvino-cpu", "tensorrt"):
            candidates = [(results[name][batch]["p50_ms"], name) for name, row in rows.items()
                          if row.target == target and "p50_ms" in results[name].get(batch, {})
                          and passed is not None and (row.artifact, row.runtime) in passed]
            if candidates:
                _, name = min(candidates)
                row = rows[name]
                chosen.setdefault(batch, {})[target] = {
                    "row": name, "artifact": row.artifact, "precision": row.precision,
                    "runtime_options": row.runtime_options or {},
                    "p50_ms": results[name][batch]["p50_ms"],
                    "speedup_vs_eager": results[name][batch]["speedup_vs_eager"]}
    return chosen
