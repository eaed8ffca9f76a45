"""The gate's per-artifact check (exporter.verify.check), re-run on the box an artifact ships to,
without torch: every artifact the
runtimes installed here can read, on the build's golden I/O (exporter.verify.golden), judged by
the budgets the build's gate applied (recorded in the manifest) with the gate's own code
(exporter.verify.measures, exporter.verify.budgets). What the build machine's kernels computed
is not what this box's compute: int8 on a CPU without VNNI, a TensorRT plan on its GPU.

    python consumer/classify.py build/se/manifest.json --verify      # (calls main below)
    python -m exporter.verify.on_box build/se/manifest.json

Exit 1 on any breach, 0 when everything it could read passed; what it could not read is named.
Writes verify.json beside the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from exporter.files import write_text_atomic
from exporter.manifest.manifest import ManifestError, read_manifest, verify_artifacts
from exporter.runtime.cpu import cpu_identity, int8_products_saturate
from exporter.verify.check import ArtifactParity, Case, check_artifact
from exporter.verify.golden import read_golden
from models import ToolchainError

VERIFY_JSON = "verify.json"


def verify_build(manifest_path: Path, log=print) -> dict:
    """Every artifact under every reader installed here, on the golden I/O; returns verify.json's
    content (also written beside the manifest)."""
    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    verify_artifacts(manifest_path)  # sha256 of every artifact, before anything runs
    manifest = read_manifest(manifest_path)
    record = manifest.get("golden")
    if not record:
        raise ManifestError(f"{manifest_path} lists no golden I/O: run the gate on the build "
                            f"(`make parity`, or `make engine`) before shipping it")
    golden = read_golden(root, record)
    gated = {c["name"]: c["int8_gated"] for c in record["cases"]}
    cases = {name: Case(np.concatenate(batches), len(batches[0]), reference, int8_gated=gated[name])
             for name, (batches, reference) in golden.items()}
    cpu = cpu_identity()
    saturate = int8_products_saturate()
    log(f"verifying {len(manifest['artifacts'])} artifacts of {manifest_path} on this box: "
        f"{cpu['model']} ({', '.join(cpu['isa']) or 'no AVX2/AVX-512/AMX flags'}; int8 pair sums "
        f"{'saturate: no VNNI' if saturate else 'exact'}), golden I/O "
        + ", ".join(f"{name} ({len(b)} x {'x'.join(map(str, b[0].shape))})"
                    for name, (b, _) in golden.items()))
    outputs: dict = {}
    results = [entry for a in manifest["artifacts"]
               for entry in check_artifact(a, root, manifest, cases, record["budgets"][a["precision"]],
                                           record["trained_weights"], outputs)]
    for r in results:
        _log_result(r, log)
    read = [r for r in results if r.skipped is None]
    unread = [r for r in results if r.skipped is not None]
    report = {"manifest": str(manifest_path), "cpu": cpu, "int8_products_saturate": saturate,
              "passed": all(r.passed for r in read), "read": len(read), "unread": len(unread),
              "results": [r.to_json() | {"passed": r.passed and r.skipped is None,
                                         "unread": r.skipped} for r in results]}
    write_text_atomic(root / VERIFY_JSON, json.dumps(report, indent=2) + "\n")
    failed = [r for r in read if not r.passed]
    log(f"\n{len(read) - len(failed)} of {len(read)} artifact readings passed on this box"
        + (f"; {len(failed)} FAILED" if failed else "")
        + (f"; {len(unread)} not read here: " + "; ".join(f"{r.label}: {r.skipped}"
                                                          for r in unread) if unread else "")
        + f" (written to {root / VERIFY_JSON})")
    return report


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
    log(f"  {label}: {'ok' if r.passed else 'FAIL'}{summary}" + "".join(f"\n    {f}" for f in r.failures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="re-check a build's artifacts on this box")
    parser.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    try:
        report = verify_build(args.manifest)
    except (ToolchainError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
