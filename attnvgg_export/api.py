"""The Python API: from a trained model, in a file or in memory, to every artifact, its verdicts
and its speed, in one call: what `make engine` and `attnvgg-export engine` run.

    import attnvgg_export
    result = attnvgg_export.build("se", checkpoint="se.safetensors", calib_dir="calib/",
                                  eval_dir="val/", num_classes=10, img_size=64, out="build")
    result.passed, result.ship["onnxruntime-cpu"], result.warnings

Each stage is the toolchain's own function (export, precision, engines, gate, bench), run in
order on files under ``out/<variant>/``; the result is read back from those files, so it says
what the manifest, parity.json and bench.json say. Errors are the toolchain's (ToolchainError:
each message names the file or value and the fix); a gate that fails raises GateFailed, which
carries the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attnvgg_runtime.errors import ToolchainError
from attnvgg_runtime.manifest import Artifact


@dataclass(frozen=True)
class Verdict:
    """The gate's verdict on one artifact under one reader, for the bytes it judged."""
    path: str
    reader: str
    precision: str
    sha256: str
    passed: bool
    skipped: str | None  # not verified on this machine, and why
    margin: float | None  # the tightest check's budget / measured (below 1 fails); None: 0 measured
    failures: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Speed:
    """One row of the speed report at one batch size, against eager in the same run."""
    row: str
    artifact: str | None
    precision: str
    batch: int
    p50_ms: float
    speedup_vs_eager: float


@dataclass(frozen=True)
class BuildResult:
    manifest: Path
    artifacts: tuple[Artifact, ...]  # the manifest's entries (attnvgg_runtime.manifest.Artifact)
    verdicts: tuple[Verdict, ...]
    speed: tuple[Speed, ...]
    ship: dict[str, Speed]  # per target: the fastest artifact at batch 1 that passed the gate
    cpu: dict  # the machine that measured both

    @property
    def passed(self) -> bool:
        return any(not v.skipped for v in self.verdicts) and all(v.passed or v.skipped for v in self.verdicts)

    @property
    def warnings(self) -> list[str]:
        return [f"{v.path} [{v.reader}]: {w}" for v in self.verdicts for w in v.warnings]

    @property
    def report(self) -> Path:
        return self.manifest.parent / "report.md"


class GateFailed(ToolchainError):
    """The parity gate failed an artifact; ``result`` holds every verdict."""

    def __init__(self, message: str, result: BuildResult) -> None:
        super().__init__(message)
        self.result = result


def read_result(manifest_path: str | Path) -> BuildResult:
    """A build's result, read from its manifest, parity.json and bench.json."""
    import json

    from attnvgg_runtime.manifest import read_manifest

    manifest_path = Path(manifest_path)
    root = manifest_path.parent
    manifest = read_manifest(manifest_path)
    parity = json.loads((root / "parity.json").read_text()) if (root / "parity.json").is_file() else {}
    bench = json.loads((root / "bench.json").read_text()) if (root / "bench.json").is_file() else {}
    verdicts = tuple(Verdict(a["path"], a["reader"], a["precision"], a["sha256"],
                             a["passed"] and not a["skipped"], a["skipped"], a.get("margin"),
                             tuple(a["failures"]), tuple(a.get("warnings", ())))
                     for a in parity.get("artifacts", []))
    speed = tuple(Speed(name, bench["rows"][name]["artifact"], bench["rows"][name]["precision"], int(batch),
                        r["p50_ms"], r["speedup_vs_eager"])
                  for name, per_batch in bench.get("results", {}).items() for batch, r in per_batch.items()
                  if "p50_ms" in r)
    ship = {target: Speed(r["row"], r["artifact"], r["precision"], 1, r["p50_ms"], r["speedup_vs_eager"])
            for target, r in (bench.get("recommended") or {}).get("1", {}).items()}
    return BuildResult(manifest_path, tuple(manifest.artifacts), verdicts, speed, ship,
                       parity.get("cpu") or bench.get("cpu") or {})


def build(variant: str, checkpoint: str | Path | None = None, model=None, *,
          calib_dir: str | Path | None = None, eval_dir: str | Path | None = None,
          out: str | Path = "build", num_classes: int | None = None,
          width_mult: float = 1.0, img_size: int = 224, labels: list[str] | None = None,
          backend: str = "auto", bench_seconds: float = 10.0, eval_cluster: str | None = None,
          log=print) -> BuildResult:
    """Every artifact of ``variant`` with its proof, under ``out/<variant>/``.

    ``checkpoint``: a file (.pt/.pth/.safetensors, loaded without executing pickled code); or
    ``model``: an nn.Module of the variant in memory (written to ``out/<variant>/model.safetensors``
    first, and built from that file); neither: the seeded default initialization. ``calib_dir``:
    images to calibrate int8 on (default: photographs bundled with scikit-image); ``eval_dir``:
    labelled images to judge accuracy on, read on the Ray cluster ``eval_cluster`` names ("auto": a
    local one; default: EVAL_CLUSTER, then RAY_ADDRESS; neither: in this process). Sides are
    declared from ``img_size`` as `make engine`
    declares them. Raises GateFailed where the gate fails an artifact."""
    from attnvgg_export import models
    from attnvgg_export.bench.bench import BenchConfig, run_bench
    from attnvgg_export.convert.engines import build_engines
    from attnvgg_export.graphs.export import ExportConfig, default_sides, export_to_folder, image_range
    from attnvgg_export.graphs.precision import PrecisionConfig, build_precision_graphs
    from attnvgg_export.verify.cluster import cluster_from_environment
    from attnvgg_export.verify.gate import run_parity

    if checkpoint is not None and model is not None:
        raise models.ConfigError("build() takes a checkpoint file or a model in memory, not both")
    folder = Path(out) / variant
    if model is not None:
        num_classes = num_classes or _classes_of(model)
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = models.save_checkpoint(model, folder / "model.safetensors", variant, num_classes,
                                            width_mult)
    config = ExportConfig(variant, num_classes=num_classes or 1000, model_width=width_mult,
                          checkpoint=Path(checkpoint) if checkpoint else None,
                          height=image_range("height", *default_sides(img_size)),
                          width=image_range("width", *default_sides(img_size)),
                          labels=tuple(labels) if labels else None)
    manifest = export_to_folder(config, folder, log)
    build_precision_graphs(manifest, PrecisionConfig(calib_source=str(calib_dir) if calib_dir else None),
                           log)
    build_engines(manifest, backend, log)
    report = run_parity(manifest, eval_dir=eval_dir, log=log,
                        cluster=cluster_from_environment(eval_cluster))
    if not report.passed:
        raise GateFailed(f"the parity gate failed {len(report.failures())} checks; first: "
                         f"{report.failures()[0]} ({folder / 'report.md'})", read_result(manifest))
    run_bench(manifest, BenchConfig(seconds_per_case=bench_seconds), log)
    return read_result(manifest)


def _classes_of(model) -> int:
    """The output features of the model's last linear layer: its number of classes."""
    from torch import nn

    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ToolchainError("the model has no nn.Linear head to read its number of classes from; "
                             "pass num_classes")
    return last[-1].out_features
