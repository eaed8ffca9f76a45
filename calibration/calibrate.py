"""Calibration: per-tensor ranges from ONNX Runtime's calibrators, cached on disk.

The ranges are keyed by (model sha256, data sha256, method, N): both int8 graphs of a build, and
later builds with the same model and data, reuse them instead of running calibration again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data
from tqdm import tqdm

from models import ConfigError

from .data import ImageSet
from .errors import CalibrationDataError, CalibrationRangeError
from .hashing import sha256_file

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_METHOD = "percentile"  # best int8 accuracy on the trained fixture (docs/precision.md)
# Ops whose inputs/outputs the int8 graphs quantize (see exporter.quantize).
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MaxPool")

log = logging.getLogger(__name__)


class ImageReader(CalibrationDataReader):
    """ORT's CalibrationDataReader protocol over batches of preprocessed images."""

    def __init__(self, batches: list[np.ndarray], input_name: str = "input",
                 progress: tqdm | None = None) -> None:
        self._batches = batches
        self._input_name = input_name
        self._progress = progress
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index == len(self._batches):
            return None
        batch = self._batches[self._index]
        self._index += 1
        if self._progress is not None:
            self._progress.update(len(batch))
        return {self._input_name: batch}

    def __len__(self) -> int:
        return len(self._batches)


@dataclass(frozen=True)
class CalibrationResult:
    ranges_path: Path
    method: str
    count: int
    cached: bool
    seconds: float


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    return method


def cache_path(cache_dir: Path, model_sha: str, data_sha: str, method: str, count: int) -> Path:
    ops = ",".join(QUANTIZED_OP_TYPES)  # which tensors hold ranges
    key = hashlib.sha256(f"{model_sha}:{data_sha}:{method}:{count}:{ops}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{key}.json"


def check_ranges(ranges: TensorsData, source: str) -> None:
    for name, data in ranges.items():
        low, high = (np.asarray(v, dtype=np.float64) for v in data.range_value)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise CalibrationRangeError(
                f"calibration range of tensor {name!r} is not finite ({low}, {high}) in {source}: "
                f"the model produces NaN or Inf on the calibration data; check the checkpoint and "
                f"that the data is preprocessed as the manifest says")


def _load_cached(path: Path) -> TensorsData | None:
    if not path.is_file():
        return None
    try:
        ranges = load_tensors_data(path)
        _ = [data.range_value for data in ranges.values()]
        return ranges
    except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as e:
        log.warning("calibration cache %s is corrupt (%s); ignoring it and calibrating again",
                    path, type(e).__name__)
        path.unlink(missing_ok=True)
        return None


def _chunks(batches: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    """Runs of at most ``size`` batches of one shape. Histogram calibrators hold every output of
    a collect_data call in memory (~60 MB per image for VGG16 at 224) and stack them, so a call
    gets a few batches, all of the same shape."""
    chunks: list[list[np.ndarray]] = []
    for batch in batches:
        if chunks and len(chunks[-1]) < size and chunks[-1][0].shape == batch.shape:
            chunks[-1].append(batch)
        else:
            chunks.append([batch])
    return chunks


def calibrate(model_path: Path, images: ImageSet | Sequence[ImageSet], cache_dir: Path,
              method: str = DEFAULT_METHOD, batch_size: int = 8,
              chunk_batches: int = 4) -> CalibrationResult:
    """Ranges for ``model_path`` from ``images`` (one set, or one set per input size), cached in
    ``cache_dir``."""
    method = check_method(method)
    sets = [images] if isinstance(images, ImageSet) else list(images)
    for image_set in sets:
        finite = np.isfinite(image_set.images).reshape(len(image_set), -1).all(1)
        if not finite.all():
            raise CalibrationDataError(
                f"calibration image {int(np.argwhere(~finite)[0, 0])} from {image_set.source} "
                f"holds NaN or Inf values; check how the data was preprocessed")
    data_sha = hashlib.sha256("".join(s.sha256() for s in sets).encode()).hexdigest()
    count = sum(len(s) for s in sets)
    path = cache_path(cache_dir, sha256_file(model_path), data_sha, method, count)
    start = time.perf_counter()
    cached = _load_cached(path)
    if cached is not None:
        check_ranges(cached, str(path))
        return CalibrationResult(path, method, count, True, time.perf_counter() - start)
    batches = [batch for image_set in sets for batch in image_set.batches(batch_size)]
    with tempfile.TemporaryDirectory(prefix="calib-") as tmp, \
            tqdm(total=count, desc=f"calibrating ({method})", unit="img") as progress:
        calibrator = create_calibrator(
            model_path, list(QUANTIZED_OP_TYPES),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=METHODS[method])
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints per-chunk status lines
            for chunk in _chunks(batches, chunk_batches):
                calibrator.collect_data(ImageReader(chunk, progress=progress))
            ranges = calibrator.compute_data()
        del calibrator
    check_ranges(ranges, f"calibration of {model_path} on {sets[0].source}")
    save_tensors_data(ranges, path)  # ORT writes to a temporary name and renames
    return CalibrationResult(path, method, count, False, time.perf_counter() - start)
