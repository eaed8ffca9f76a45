"""The gate's per-artifact check (attnvgg_runtime.verify.check), re-run on the box an artifact
ships to, without torch: every artifact the runtimes installed here can read, on the build's
golden I/O (attnvgg_runtime.verify.golden), judged by the budgets the build's gate applied
(recorded in the manifest) with the gate's own code (attnvgg_runtime.verify.measures,
attnvgg_runtime.verify.budgets). What the build machine's kernels computed is not what this
box's compute: int8 on a CPU without VNNI, fp16 on an ARM core with fp16 arithmetic, a TensorRT
plan on its GPU.

    attnvgg-runtime verify build/se/manifest.json
    attnvgg-runtime verify build/se/manifest.json --case heldout --reader onnxruntime   # restricted

Exit 1 on any breach; 0 when everything it read passed; 2 where it read nothing (a verify that
read nothing proves nothing) and on an unknown reader, artifact or case (the message names the
known ones). What it could not read, what a restriction left out, and what passed without being
proven (warnings) are named. verify.json beside the manifest keeps every run's results per
artifact bytes, reader and version, and CPU, newest first: a later run, restricted or not, adds
to it and never erases a FAIL.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from attnvgg_runtime.errors import ConfigError, ToolchainError
from attnvgg_runtime.files import write_text_atomic
from attnvgg_runtime.manifest import Artifact, ManifestError, read_manifest, verify_artifacts
from attnvgg_runtime.readers.cpu import cpu_identity, int8_products_saturate
from attnvgg_runtime.verdicts import VERIFY_FORMAT, VERIFY_JSON, merge_history, read_box_history
from attnvgg_runtime.verify.check import ArtifactParity, Case, check_artifact
from attnvgg_runtime.verify.golden import read_golden
from attnvgg_runtime.verify.readers import KNOWN_READERS


class NothingVerified(ToolchainError):
    """A verify that read nothing: it proves nothing, so it is an error, never a pass (exit 2)."""


@dataclass(frozen=True)
class Restriction:
    """Part of the golden I/O (its cases; the first ``images`` of each, in whole batches),
    artifacts (fnmatch patterns of their paths) and readers: a verify that must fit a time (an
    emulated CPU in CI). None: all of them."""
    cases: tuple[str, ...] | None = None
    artifacts: tuple[str, ...] | None = None
    readers: tuple[str, ...] | None = None
    images: int | None = None

    def __post_init__(self) -> None:
        if self.images is not None and self.images < 1:
            raise ConfigError(f"--images {self.images}: a verify must read at least 1 image of each "
                              f"case; leave it out to read them all")

    def __bool__(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def describe(self) -> str:
        return "; ".join(f"{name} {value if isinstance(value, int) else ', '.join(value)}"
                         for name, value in asdict(self).items() if value is not None) or "none"

    def takes(self, artifact: Artifact) -> bool:
        return self.artifacts is None or any(fnmatch.fnmatch(artifact.path, p) for p in self.artifacts)


def verify_build(manifest_path: Path, log=print, restriction: Restriction = Restriction(),
                 plan_code_allowed: bool = False) -> dict:
    """Every artifact under every reader installed here, on the golden I/O (or the part of them
    ``restriction`` names); returns verify.json's content (also written beside the manifest).
    ``plan_code_allowed``: TensorRT plans may run the host code they embed (--allow-plan-code)."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    verify_artifacts(manifest_path)  # sha256 of every artifact, before anything runs
    manifest = read_manifest(manifest_path)
    record = manifest.golden
    if not record:
        raise ManifestError(f"{manifest_path} lists no golden I/O: run the gate on the build "
                            f"(`make parity`, or `make engine`) before shipping it")
    golden = read_golden(root, record)
    unknown_readers = sorted(set(restriction.readers or ()) - set(KNOWN_READERS))
    if unknown_readers:
        raise ConfigError(f"no reader {unknown_readers}; the readers are {', '.join(KNOWN_READERS)} "
                          f"(--reader takes these names, comma-separated)")
    unknown = set(restriction.cases or ()) - set(golden)
    if unknown:
        raise ManifestError(f"golden I/O of {manifest_path} has no case {sorted(unknown)}; it has "
                            f"{', '.join(golden)}")
    golden = {name: _first_images(batches, reference, restriction.images)
              for name, (batches, reference) in golden.items()
              if restriction.cases is None or name in restriction.cases}
    artifacts = [a for a in manifest.artifacts if restriction.takes(a)]
    if not artifacts:
        raise ManifestError(f"no artifact of {manifest_path} matches {restriction.artifacts}")
    recorded = {c["name"]: c for c in record["cases"]}
    cases = {name: Case(np.concatenate(batches), len(batches[0]), reference,
                        labels=_labels(recorded[name], len(reference)),
                        int8_gated=recorded[name]["int8_gated"])
             for name, (batches, reference) in golden.items()}
    cpu = cpu_identity()
    saturate = int8_products_saturate()
    log(f"verifying {len(artifacts)} artifacts of {manifest_path} on this box: "
        f"{cpu['model']} ({', '.join(cpu['isa']) or 'no ISA flags listed'}; int8 pair sums "
        f"{'saturate: no VNNI' if saturate else 'exact'}), golden I/O "
        + ", ".join(f"{name} ({len(b)} x {'x'.join(map(str, b[0].shape))})"
                    for name, (b, _) in golden.items()))
    if restriction:
        log(f"RESTRICTED to {restriction.describe()}: what it leaves out is not verified here")
    outputs: dict = {}
    results = []
    for artifact in artifacts:  # each logged as it is judged: under emulation one takes minutes
        entries = check_artifact(artifact, root, manifest, cases, record["budgets"][artifact.precision],
                                 record["trained_weights"], outputs, readers=restriction.readers,
                                 plan_code_allowed=plan_code_allowed)
        for r in entries:
            _log_result(r, log)
        results += entries
    read = [r for r in results if r.skipped is None]
    unread = [r for r in results if r.skipped is not None]
    warnings = [f"{r.label}: {w}" for r in read for w in r.warnings]
    when = datetime.now(UTC).isoformat(timespec="seconds")
    run = [r.to_json() | {"passed": r.passed and r.skipped is None, "unread": r.skipped,
                          "cpu": cpu["model"], "when": when,
                          "restricted": restriction.describe() if restriction else None}
           for r in results]
    report = {"manifest": str(manifest_path), "cpu": cpu, "int8_products_saturate": saturate,
              "when": when, "passed": bool(read) and all(r.passed for r in read), "read": len(read),
              "unread": len(unread), "warnings": warnings,
              "restricted": asdict(restriction) if restriction else None, "results": run}
    # the file keeps every run's results, newest first: a later, restricted run never erases
    # a FAIL (attnvgg_runtime.verdicts.box_verdict reads the latest per bytes, reader and CPU)
    history = merge_history(read_box_history(root), run)
    write_text_atomic(root / VERIFY_JSON, json.dumps(
        {"format": VERIFY_FORMAT, "latest": {k: v for k, v in report.items() if k != "results"},
         "results": history}, indent=2) + "\n")
    failed = [r for r in read if not r.passed]
    log(f"\n{len(read) - len(failed)} of {len(read)} artifact readings passed on this box"
        + (f"; {len(failed)} FAILED" if failed else "")
        + (f"; {len(warnings)} warnings: " + "; ".join(warnings) if warnings else "")
        + (f"; {len(unread)} not read here: " + "; ".join(f"{r.label}: {r.skipped}"
                                                          for r in unread) if unread else "")
        + (f"; RESTRICTED to {restriction.describe()}" if restriction else "")
        + f" (written to {root / VERIFY_JSON})")
    if not read:
        raise NothingVerified(
            f"nothing was verified on this box: {len(results)} readings matched "
            f"({restriction.describe() if restriction else 'no restriction'}) and none could be read "
            f"here" + (f" ({'; '.join(f'{r.label}: {r.skipped}' for r in unread)})" if unread else "")
            + ": install a runtime that reads them (pip install 'attnvgg-runtime[onnxruntime]' or "
              "[openvino]) or widen --reader/--artifact")
    return report


def _labels(case: dict, images: int) -> np.ndarray | None:
    """A golden case's labels (where the gate had them), for its first ``images``."""
    return None if case.get("labels") is None else np.asarray(case["labels"][:images])


def _first_images(batches: list, reference, images: int | None) -> tuple[list, object]:
    """A case's first ``images`` (at least one whole batch, in whole batches) and their outputs."""
    if images is None:
        return batches, reference
    kept = batches[:max(1, -(-images // len(batches[0])))]
    return kept, reference[:sum(len(b) for b in kept)]


def _log_result(r: ArtifactParity, log) -> None:
    label = f"{r.path} [{r.reader}, {r.reader_version}]"
    if r.skipped is not None:
        log(f"  {label}: not read here ({r.skipped})")
        return
    gated = {name: c for name, c in r.cases.items() if c.get("gated", True)}
    worst = max(gated.items(), key=lambda kv: kv[1]["rel_l2"], default=None)
    summary = (f" worst rel L2 {worst[1]['rel_l2']:.3g} at {worst[0]}, min cosine "
               f"{min(c['cosine'] for c in gated.values()):.5f}" if worst else "")
    summary += "".join(f"; {name} reported, not gated: rel L2 {c['rel_l2']:.3g}"
                       for name, c in r.cases.items() if name not in gated)
    summary += f"; margin {r.margin:.3g}" if r.margin is not None else ""
    summary += f"; not gated here: {r.not_gated}" if r.not_gated else ""
    status = "FAIL" if not r.passed else "reported" if r.not_gated else "ok"
    log(f"  {label}: {status}{summary}" + "".join(f"\n    {f}" for f in r.failures))
