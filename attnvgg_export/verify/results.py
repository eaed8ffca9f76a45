"""The labelled evaluation's per-image results, kept in one SQLite file (EVAL_STORE, by default
``evaluation.sqlite`` beside the manifest), so that an interrupted evaluation resumes where it
stopped and a rebuilt artifact is evaluated again alone: every other reading's results are
still those of the same bytes.

A result is keyed by what it is a property of: the bytes read (the artifact's sha256; for eager,
the sha256 of its model record and fp32 graph, ``eager_identity``), the reader and its library
version, the CPU whose kernels computed it, the preprocessing, and the image's own sha256 (not
its name: a renamed or moved image is the same result, an edited one another). It holds the
image's label as the set gave it, the top-5 classes best first (ties to the lower class, as
argmax), and whether top-1 and top-5 were right; an image its reader could not decode is kept
too (no classes), so that every pass skips the same images.

One writer, the process that plans the evaluation: a cluster's workers return their results
to it (attnvgg_export.verify.cluster). Each batch is committed as it comes, in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnvgg_runtime.files import OutputError

STORE_FILE = "evaluation.sqlite"
TOP_K = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    artifact_sha256 TEXT NOT NULL,
    reader TEXT NOT NULL,           -- "openvino-bf16 (openvino 2025.4.0)"
    cpu TEXT NOT NULL,
    preprocessing_sha256 TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    label INTEGER NOT NULL,
    top5 TEXT,
    correct1 INTEGER,
    correct5 INTEGER,
    PRIMARY KEY (artifact_sha256, reader, cpu, preprocessing_sha256, image_sha256)
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class Reading:
    """One artifact under one reader, as the evaluation names and keys it."""

    label: str  # "model.int8-cpu.onnx [onnxruntime]", or "eager PyTorch fp32"
    artifact: str | None  # its path in the build; None for eager
    reader: str  # onnxruntime, openvino, openvino-bf16, tensorrt, eager
    sha256: str  # the bytes read (eager: eager_identity)
    version: str  # the reader's library and version, "onnxruntime 1.23.2"

    @property
    def key(self) -> str:
        """The store's reader column: the reader and its library version (the bf16 entry and
        OpenVINO's fp32 reading of one IR are one library, and two readings)."""
        return f"{self.reader} ({self.version})"


@dataclass(frozen=True)
class ImageResult:
    image_sha256: str
    label: int
    top5: tuple[int, ...] | None  # None: undecodable

    @property
    def correct1(self) -> bool | None:
        return None if self.top5 is None else self.top5[0] == self.label

    @property
    def correct5(self) -> bool | None:
        return None if self.top5 is None else self.label in self.top5


def top_classes(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per image, the ``k`` highest classes best first; ties go to the lower class, so the first
    is argmax's choice (attnvgg_runtime.verify.accuracy.top_k_correct counts it so)."""
    return np.argsort(-np.asarray(logits, np.float64), axis=1, kind="stable")[:, :min(k, logits.shape[1])]


def preprocessing_sha256(preprocessing: dict) -> str:
    return hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest()


class ResultStore:
    """Per-image results by (reading, CPU, preprocessing, image); see the module's docstring."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise OutputError(f"cannot use {self.path} as the evaluation's result store ({e}); "
                              f"remove it (its results are computed again) or point EVAL_STORE "
                              f"elsewhere") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, reading: Reading, cpu: str, preprocessing: str, results: Iterable[ImageResult]) -> None:
        """One batch's results, committed together (a batch half-written is not kept)."""
        rows = [(reading.sha256, reading.key, cpu, preprocessing, r.image_sha256, int(r.label),
                 None if r.top5 is None else ",".join(map(str, r.top5)),
                 None if r.top5 is None else int(r.correct1), None if r.top5 is None else int(r.correct5))
                for r in results]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def results(self, reading: Reading, cpus: Iterable[str], preprocessing: str) -> dict[str, ImageResult]:
        """This reading's stored results computed on any of ``cpus``, by image sha256."""
        cpus = list(cpus)
        found = self._db.execute(
            f"SELECT image_sha256, label, top5, cpu FROM results WHERE artifact_sha256 = ? AND reader = ? "
            f"AND preprocessing_sha256 = ? AND cpu IN ({','.join('?' * len(cpus))})",
            (reading.sha256, reading.key, preprocessing, *cpus))
        return {image: ImageResult(image, label, None if top5 is None else tuple(map(int, top5.split(","))))
                for image, label, top5, _ in found}

    def cpus_of(self, reading: Reading, cpus: Iterable[str], preprocessing: str,
                images: Iterable[str]) -> list[str]:
        """The CPUs among ``cpus`` that computed this reading's results on ``images``."""
        wanted = set(images)
        cpus = list(cpus)
        found = self._db.execute(
            f"SELECT DISTINCT cpu, image_sha256 FROM results WHERE artifact_sha256 = ? AND reader = ? "
            f"AND preprocessing_sha256 = ? AND cpu IN ({','.join('?' * len(cpus))})",
            (reading.sha256, reading.key, preprocessing, *cpus))
        return sorted({cpu for cpu, image in found if image in wanted})
