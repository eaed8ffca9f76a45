"""How one reading reads one unit of EVAL_DIR, wherever it runs: the runner made from files the
worker can see (its bytes checked against the sha256 the evaluation keys its results to), the
unit decoded and read, each image's top-5 kept. Shared by the in-process evaluation
(attnvgg_export.verify.evaluate) and a Ray cluster's actors (attnvgg_export.verify.cluster)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attnvgg_export.verify.results import ImageResult, Reading, top_classes
from attnvgg_runtime.manifest import Manifest, ManifestError, read_manifest
from attnvgg_runtime.readers.cpu import cpu_identity
from attnvgg_runtime.readers.emulated import emulated_cpu

if TYPE_CHECKING:
    from attnvgg_export.calibration.evaluation import Unit
    from attnvgg_export.calibration.preprocessing import Preprocessing


def cpu_key(threads: int | None = None) -> str:
    """The kernels a result is computed by, as the store keys it: the CPU's model name (which fixes
    the kernels' ISA), or the emulated one, and the reader's threads: eager's and OpenVINO's fp32
    outputs move in the last bits with the thread count (1e-8 at full size), which can reorder
    the top-5 of an untrained model's near-equal logits."""
    emulated = emulated_cpu()
    model = f"emulated {emulated}" if emulated else cpu_identity()["model"]
    return f"{model}, {threads or os.cpu_count() or 1} threads"


def eager_identity(manifest: Manifest) -> str:
    """What eager's results are a property of, in place of an artifact's sha256: the model record
    (checkpoint and its sha256, variant, width, classes) and the fp32 graph exported from it."""
    fp32 = next(a for a in manifest.artifacts if a.precision == "fp32" and a.format == "onnx")
    return hashlib.sha256(json.dumps({"model": manifest.model, "fp32_graph_sha256": fp32.sha256},
                                     sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RunnerSpec:
    """How a worker makes a reading's runner, from files it can see (picklable)."""

    manifest: str  # the manifest's path
    reading: Reading
    threads: int | None = None  # None: every core of the machine


def make_runner(spec: RunnerSpec):
    """The reading's runner, after checking that the bytes this process sees are those the
    evaluation keys its results to (on a cluster: the node's copy of the build)."""
    manifest_path = Path(spec.manifest)
    manifest = read_manifest(manifest_path)
    reading = spec.reading
    if reading.artifact is None:
        if eager_identity(manifest) != reading.sha256:
            raise ManifestError(f"{manifest_path} is not the build this evaluation was planned on "
                                f"(its model differs); give every worker the same build")
        import torch

        from attnvgg_export.runtime.eager import eager_runner, model_from_manifest

        if spec.threads:
            torch.set_num_threads(spec.threads)
        return eager_runner(model_from_manifest(manifest))
    from attnvgg_runtime.files import sha256_file
    from attnvgg_runtime.manifest import inside_build
    from attnvgg_runtime.verify.readers import runner_for

    artifact = manifest.artifact(reading.artifact)
    for item in artifact.files():
        path = inside_build(manifest_path.parent, item.path, str(manifest_path))
        if sha256_file(path) != item.sha256 or artifact.sha256 != reading.sha256:
            raise ManifestError(f"{path} is not the artifact this evaluation "
                                f"was planned on (its sha256 differs): give every worker the same build")
    return runner_for(artifact, manifest_path.parent, manifest, reading.reader, threads=spec.threads)


def read_unit(runner, unit: Unit, pre: Preprocessing) -> list[ImageResult]:
    """One unit's images decoded and read: each image's top-5 (None where undecodable)."""
    from attnvgg_export.calibration.evaluation import decode_unit

    return read_decoded(runner, unit, *decode_unit(unit, pre))


def read_decoded(runner, unit: Unit, images: np.ndarray, decoded: np.ndarray) -> list[ImageResult]:
    """A decoded unit read (a cluster decodes in one stage and reads in the next)."""
    top = iter(top_classes(runner(images)).tolist() if len(images) else [])
    return [ImageResult(sha, label, tuple(next(top)) if ok else None)
            for sha, label, ok in zip(unit.image_sha256, unit.labels, decoded, strict=True)]
