"""What invalidates what: a verdict, a recommendation or a report belongs to the bytes it was
made about. A stage that writes artifacts calls ``invalidate_verdicts`` before it records them,
so nothing derived from the old bytes survives it: the gate's record in the manifest, the speed
recommendation, and every file rendered from them."""

from __future__ import annotations

from pathlib import Path

from attnvgg_runtime.manifest import Artifact, Manifest, write_manifest
from attnvgg_runtime.verdicts import gate_unverified_reason

# files derived from the artifacts' bytes (the gate's, the self-test's, the bench's, the report,
# and a signature of the old build, which would otherwise read as an altered build)
DERIVED_FILES = ("parity.json", "parity.junit.xml", "explain.json", "selftest.json", "bench.json",
                 "verify.json", "report.md", "parity-errors.png", "explain-modules.png",
                 "bench-latency.png", "accuracy-drop.png", "golden/inputs.json",
                 "golden/outputs.json", "build.sig")


def _remove(root: Path, names: tuple[str, ...]) -> list[str]:
    removed = [name for name in names if (root / name).exists()]
    for name in removed:
        (root / name).unlink()
    return removed


def invalidate_recommendation(root: Path, manifest: Manifest | None) -> list[str]:
    """The speed recommendation was chosen among the artifacts the previous gate passed: a new
    gate run drops it (bench.json, its plot, the manifest's ``bench``) until `make bench` runs
    again. Returns what was removed, for the log."""
    removed = _remove(Path(root), ("bench.json", "bench-latency.png"))
    if manifest is not None and manifest.bench:
        manifest.bench = None
        removed.append("manifest bench")
    return removed


def invalidate_verdicts(root: Path, manifest: Manifest | None) -> list[str]:
    """Remove every verdict, recommendation and report about the artifacts in ``root`` from the
    folder and from ``manifest`` (edited in place; the caller writes it; None: the folder only).
    Returns what was removed, for the log."""
    removed = _remove(Path(root), DERIVED_FILES) + invalidate_recommendation(root, manifest)
    if manifest is None:
        return removed
    if manifest.parity.pop("gate", None) is not None:
        removed.append("manifest parity.gate")
    if manifest.report is not None:
        manifest.report = None
        removed.append("manifest report")
    if manifest.golden is not None:  # eager's outputs on the old split, old weights
        manifest.golden = None
        removed.append("manifest golden")
    return removed


def forget_verdicts(manifest_path: Path, manifest: Manifest, log=print) -> None:
    """invalidate_verdicts, written to the manifest at once: a stage that then fails half-way
    leaves no verdict about bytes it may have replaced."""
    removed = invalidate_verdicts(Path(manifest_path).parent, manifest)
    if removed:
        write_manifest(manifest_path, manifest)
        log(f"artifacts are about to be rewritten; removed what was derived from the old ones: "
            f"{', '.join(removed)}")


def passing_verdict(manifest: Manifest, artifact: Artifact, reader: str) -> bool:
    """Whether the gate passed ``artifact`` under ``reader`` for the bytes the manifest lists now
    (its sha256): not skipped, not failed, not about other bytes. The rule is the box's
    (attnvgg_runtime.verdicts), which refuses to run anything else."""
    return gate_unverified_reason(manifest, artifact, reader) is None


def recommendation_still_passes(manifest: Manifest) -> bool:
    """Whether every artifact the speed recommendation names has a passing verdict for its
    current bytes under the reader it was timed with (``reader``; a recommendation that does not
    record it, from before manifest schema 1.6, does not pass)."""
    recommended = (manifest.bench or {}).get("recommended", {})
    by_path = {a.path: a for a in manifest.artifacts}
    return all(entry["artifact"] in by_path and "reader" in entry
               and passing_verdict(manifest, by_path[entry["artifact"]], entry["reader"])
               for targets in recommended.values() for entry in targets.values())
