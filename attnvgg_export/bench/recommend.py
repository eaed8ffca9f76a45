"""Which artifact to ship, per target and batch size: the fastest that passed the gate."""

from __future__ import annotations

from attnvgg_export.manifest.lifecycle import passing_verdict
from attnvgg_runtime.manifest import Manifest


def gate_passed(manifest: Manifest) -> set[tuple[str, str]] | None:
    """(artifact, reader) pairs the gate passed for the bytes the manifest lists now, or None
    where no gate verdict stands (never run, or removed by a stage that rewrote artifacts)."""
    gate = (manifest.parity or {}).get("gate")
    if not gate or "verdicts" not in gate:
        return None
    return {(v["path"], v["reader"]) for v in gate["verdicts"]
            for a in manifest.artifacts if a.path == v["path"]
            if passing_verdict(manifest, a, v["reader"])}


NOISE = 0.05  # rows whose p50 is within 5% of the fastest are a tie on a noisy machine


def recommend(results: dict, rows: dict, passed: set | None, batches) -> dict:
    """Per batch size and target, the fastest artifact that passed the gate in this run (on any
    CPU: the measurement decides, not a table of which runtime wins where), with the other
    passing rows within NOISE of it named as ties."""
    chosen: dict = {}
    for batch in map(str, batches):
        for target in ("onnxruntime-cpu", "openvino-cpu", "tensorrt"):
            candidates = sorted((results[name][batch]["p50_ms"], name) for name, row in rows.items()
                                if row.target == target and "p50_ms" in results[name].get(batch, {})
                                and passed is not None and (row.artifact, row.runtime) in passed)
            if not candidates:
                continue
            fastest, name = candidates[0]
            row = rows[name]
            chosen.setdefault(batch, {})[target] = {
                "row": name, "artifact": row.artifact, "reader": row.runtime, "precision": row.precision,
                "runtime_options": row.runtime_options or {},
                "p50_ms": fastest, "speedup_vs_eager": results[name][batch]["speedup_vs_eager"],
                "ties": [other for ms, other in candidates[1:] if ms <= fastest * (1 + NOISE)]}
    return chosen
