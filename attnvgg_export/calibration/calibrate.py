"""Calibration: per-tensor ranges, streamed batch by batch, cached on disk.

Each batch runs through an inference-speed ONNX Runtime session that also returns the
activations that will get a Q/DQ pair; they are folded into ONNX Runtime's own histogram
collectors (or a running min/max) and released before the next batch, so memory does not grow
with the number of images. The ranges are keyed by (model sha256, data sha256, method, N,
tensors): both int8 graphs of a build, and later builds with the same model and data, reuse them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import (
    HistogramCollector,
    TensorsData,
    load_tensors_data,
    save_tensors_data,
)
from tqdm import tqdm

from attnvgg_export.calibration.graph_outputs import save_with_outputs
from attnvgg_export.models import ConfigError
from attnvgg_runtime.files import sha256_file

from .data import ImageSet
from .errors import CalibrationDataError, CalibrationRangeError

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_METHOD = "percentile"  # best int8 accuracy on the trained fixture (docs/precision.md)
# Ops whose inputs/outputs the int8 graphs quantize (see attnvgg_export.graphs.quantize).
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MaxPool")

log = logging.getLogger(__name__)


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


def cache_path(cache_dir: Path, model_sha: str, data_sha: str, method: str, count: int,
               tensors: Sequence[str]) -> Path:
    names = ",".join(tensors)  # which tensors hold ranges
    key = hashlib.sha256(f"{model_sha}:{data_sha}:{method}:{count}:{names}".encode()).hexdigest()[:24]
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


# ONNX Runtime's create_calibrator defaults for the histogram methods (a test checks they still
# are), so that the streaming collector computes what ORT's calibrators compute.
HISTOGRAM_SETTINGS = {
    "percentile": {"num_bins": 2048, "num_quantized_bins": 2048, "percentile": 99.999,
                   "symmetric": True},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128, "percentile": 99.999,
                "symmetric": False},
}


class UniformHistogramCollector(HistogramCollector):
    """ONNX Runtime's HistogramCollector, with its absolute-value histogram (the percentile
    method) counted by torch.histc instead of np.histogram: ORT's bins are uniform (the first
    batch spans |x| min..max in num_bins; later batches append bins of the same width), which
    torch counts in float32 in one multi-threaded pass, about three times numpy's speed. Counts
    agree except for values within float rounding of an edge; the percentile and entropy math
    after collection is ORT's own. The arrays passed in are overwritten with their absolute
    values (no copy of a 100 MB activation per tensor and batch): pass arrays nothing else
    reads.

    ``growth_bound``: an upper bound on (elements over all calls) / (elements in the first call)
    of every tensor. Given it, the percentile method counts, after the first call, only the bins
    that can still hold the percentile (see ``_first_deciding_bin``): histc skips a value below
    its range at about a sixth of the cost of binning it (calibrating full-size VGG16-SE on 256
    images: 40.7 s profiled before, 30.4 s after; docs/precision.md). The
    percentile lands in the same bin (tests/calibration), because every bin skipped is certain
    to lie below it, up to the float rounding of an edge that already separates histc from
    np.histogram (one value moved to the next bin); the skipped values are added to bin 0, so
    the histogram's lower bins (which nothing after the percentile reads) are not ORT's."""

    def __init__(self, *args, growth_bound: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.growth_bound = growth_bound
        self.element_bound: dict[str, float] = {}
        self.elements: dict[str, int] = {}

    def _first_deciding_bin(self, tensor: str, counts: np.ndarray) -> int:
        """The lowest bin whose counts can still move the percentile. ORT's percentile bin is the
        first i with cdf[i] >= p, i.e. with at most (1 - p) * N values above bin i. A bin with
        more than (1 - p) * N_max values above it already (N_max >= N: every image still to
        come counted) stays below the percentile bin whatever comes; so does every bin under
        it. One bin of slack covers float rounding in ORT's cumulative sum."""
        bound = self.element_bound.get(tensor)  # none: no growth_bound, or a NaN first batch
        if bound is None or self.method != "percentile":
            return 0
        allowed_above = (1 - self.percentile / 100) * bound
        above = np.cumsum(counts[::-1])[::-1][1:]  # above[i]: values in the bins above bin i
        below_percentile = np.flatnonzero(above > allowed_above)
        return max(int(below_percentile[-1]) - 1, 0) if len(below_percentile) else 0

    def collect_absolute_value(self, name_to_arr):
        for tensor, data in name_to_arr.items():
            values = torch.from_numpy(np.ascontiguousarray(data)).view(-1)
            low, high = (v.numpy() for v in torch.aminmax(values)) if values.numel() else (0, 0)
            if values.numel() == 0 or np.isnan(low) or np.isnan(high):
                super().collect_absolute_value({tensor: np.asarray(data)})  # ORT's NaN handling
                continue
            self.elements[tensor] = self.elements.get(tensor, 0) + values.numel()
            top = max(abs(float(low)), abs(float(high)))  # |x| max, without another pass
            magnitude = values.abs_()
            if tensor not in self.histogram_dict:  # ORT's first edges: |x| min to max
                edges = np.histogram_bin_edges([float(magnitude.min()), top], self.num_bins)
                edges = edges.astype(np.float32)
                old_hist, old_min, old_max = None, low, high
                if self.growth_bound is not None:
                    # ceil, with room for float rounding: a ratio of pixels such as 256**2 /
                    # 224**2 is not exact in binary, and an exact count must not overrun it
                    self.element_bound[tensor] = math.ceil(values.numel() * self.growth_bound * (1 + 1e-9))
            else:
                old_hist, edges, old_min, old_max = self.histogram_dict[tensor]
                if top > edges[-1]:  # grow by whole bins of the same width, as ORT does
                    width = edges[1] - edges[0]
                    edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
                    edges = edges.astype(np.float32)
            first = 0 if old_hist is None else self._first_deciding_bin(tensor, old_hist)
            counts = np.zeros(len(edges) - 1, dtype=np.int64)
            counts[first:] = torch.histc(magnitude, len(edges) - 1 - first, float(edges[first]),
                                         float(edges[-1])).numpy().astype(np.int64)
            if first:  # the values below bin `first` (with the rare ones below the first
                # edge, which np.histogram and a full histc drop: a handful in millions)
                counts[0] += values.numel() - counts[first:].sum()
            if old_hist is not None:
                counts[:len(old_hist)] += old_hist
            self.histogram_dict[tensor] = (counts, edges, min(old_min, low), max(old_max, high))

    def compute_percentile(self):
        overrun = [t for t, n in self.elements.items() if n > self.element_bound.get(t, np.inf)]
        if overrun:  # a caller's bound was wrong: the skipped bins may have held the percentile
            raise RuntimeError(f"calibration saw more values than its growth_bound allowed for "
                               f"{overrun[:3]}; the percentile ranges would not be exact")
        return super().compute_percentile()


class StreamingCollector:
    """Ranges folded in batch by batch, each batch's activations released before the next: memory
    does not grow with the number of images. Histogram methods use ONNX Runtime's own
    HistogramCollector (merging a batch into the histograms is what it does between calls);
    minmax keeps a running min and max, as ORT's MinMaxCalibrater without moving average."""

    def __init__(self, method: str, growth_bound: float | None = None) -> None:
        self.method = method
        self.minmax: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.histograms = None
        if method in HISTOGRAM_SETTINGS:
            self.histograms = UniformHistogramCollector(method=method, scenario="same",
                                                        growth_bound=growth_bound,
                                                        **HISTOGRAM_SETTINGS[method])

    def add(self, tensors: dict[str, np.ndarray]) -> None:
        """Fold one batch in. The arrays are consumed (overwritten): they are this batch's
        activations, read by nothing else."""
        tensors = {k: v for k, v in tensors.items() if np.issubdtype(v.dtype, np.floating)}
        if self.histograms is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT prints a line per call
                self.histograms.collect(tensors)
            return
        for name, value in tensors.items():
            low, high = np.nanmin(value), np.nanmax(value)
            if name in self.minmax:
                low, high = min(low, self.minmax[name][0]), max(high, self.minmax[name][1])
            self.minmax[name] = (low, high)

    def ranges(self) -> TensorsData:
        if self.histograms is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                return TensorsData(METHODS[self.method], self.histograms.compute_collection_result())
        return TensorsData(CalibrationMethod.MinMax, dict(self.minmax))


def _session_with_outputs(model_path: Path, tensors: Sequence[str], folder: Path):
    """An inference-speed ONNX Runtime session (all threads, graph optimizations on: fusions that
    would hide a requested tensor are not applied) that also returns ``tensors``."""
    import onnxruntime as ort

    augmented = save_with_outputs(model_path, tensors, folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # every feature map is an output: an arena would keep them
    return ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])


def calibrate(model_path: Path, images: ImageSet | Sequence[ImageSet], cache_dir: Path,
              method: str = DEFAULT_METHOD, tensors: Sequence[str] | None = None,
              batch_size: int = 8) -> CalibrationResult:
    """Ranges for ``model_path`` from ``images`` (one set, or one set per input size), cached in
    ``cache_dir``. ``tensors``: the activations to calibrate, those that will get a Q/DQ pair
    (default: every input and output of the quantized op types, as ONNX Runtime selects them)."""
    method = check_method(method)
    sets = [images] if isinstance(images, ImageSet) else list(images)
    for image_set in sets:
        finite = np.isfinite(image_set.images).reshape(len(image_set), -1).all(1)
        if not finite.all():
            raise CalibrationDataError(
                f"calibration image {int(np.argwhere(~finite)[0, 0])} from {image_set.source} "
                f"holds NaN or Inf values; check how the data was preprocessed")
    tensors = sorted(tensors) if tensors is not None else candidate_tensors(model_path)
    data_sha = hashlib.sha256("".join(s.sha256() for s in sets).encode()).hexdigest()
    count = sum(len(s) for s in sets)
    path = cache_path(cache_dir, sha256_file(model_path), data_sha, method, count, tensors)
    start = time.perf_counter()
    cached = _load_cached(path)
    if cached is not None:
        check_ranges(cached, str(path))
        return CalibrationResult(path, method, count, True, time.perf_counter() - start)
    collector = StreamingCollector(method, growth_bound(sets, batch_size))
    with tempfile.TemporaryDirectory(prefix="calib-") as tmp, \
            tqdm(total=count, desc=f"calibrating ({method})", unit="img") as progress:
        import onnxruntime as ort

        session = _session_with_outputs(model_path, tensors, Path(tmp))
        input_name = session.get_inputs()[0].name
        for image_set in sets:
            for batch in image_set.batches(batch_size):
                outputs = session.run_with_ort_values(
                    tensors, {input_name: ort.OrtValue.ortvalue_from_numpy(batch)})
                # folded in a tensor at a time (the collector keeps each tensor's state apart),
                # each one released before the next. The collector overwrites what it reads, so
                # an output that may share memory with the input batch (the caller's images) or
                # with an output still to fold is copied first; the others are ORT's own buffers,
                # read in place (copying each was ~1 GB of fresh pages a batch at full size)
                arrays = [o.numpy() for o in outputs]
                del outputs
                for i, name in enumerate(tensors):
                    value = arrays[i]
                    arrays[i] = None
                    if any(a is not None and np.may_share_memory(value, a)
                           for a in (batch, *arrays[i + 1:])):
                        value = value.copy()
                    collector.add({name: value})
                    del value  # this tensor's activations: released before the next is folded
                progress.update(len(batch))
        del session
    ranges = collector.ranges()
    check_ranges(ranges, f"calibration of {model_path} on {sets[0].source}")
    save_tensors_data(ranges, path)  # ORT writes to a temporary name and renames
    return CalibrationResult(path, method, count, False, time.perf_counter() - start)


def growth_bound(sets: Sequence[ImageSet], batch_size: int) -> float:
    """An upper bound on (a tensor's elements over every batch) / (its elements in the first
    batch). The tensors calibrated (``candidate_tensors``) are feature maps, which grow with an
    image's pixels, or follow the global pool and do not, so an image counts max(1, its pixels
    / the first batch's). A tensor that grew faster would fail the collector's check."""
    first = sets[0].images
    pixels = first.shape[2] * first.shape[3]
    weight = sum(len(s) * max(1.0, s.images.shape[2] * s.images.shape[3] / pixels) for s in sets)
    return weight / min(batch_size, len(first))


def candidate_tensors(model_path: Path) -> list[str]:
    """The activations that ONNX Runtime's QDQ quantizer gives a Q/DQ pair, so only those are
    collected: the activation input and the output of every Conv and Gemm (the logits too: ORT
    quantizes a graph output under another name), and a MaxPool's output when its input is
    quantized (ORT quantizes a MaxPool only then; an SE block's gate multiplication before a
    pool stays float). A test checks this set against the tensors the int8 graphs of every
    variant actually quantize."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    quantized: set[str] = set()
    for node in graph.node:  # topological order
        if node.op_type in ("Conv", "Gemm"):
            quantized.update((node.input[0], node.output[0]))
        elif node.op_type == "MaxPool" and node.input[0] in quantized:
            quantized.add(node.output[0])
    return sorted(quantized - initializers)
