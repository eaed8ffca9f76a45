import contextlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import load_tensors_data

from attnvgg_export.calibration.calibrate import calibrate, check_method
from attnvgg_export.calibration.data import ImageSet
from attnvgg_export.calibration.errors import CalibrationDataError, CalibrationRangeError
from attnvgg_export.models import ConfigError


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return ImageSet(rng.standard_normal((16, 3, 64, 64), dtype=np.float32), None, "test noise")


@pytest.fixture
def fp32_graph(exported):
    return exported("se").parent / "model.onnx"


def test_ranges_are_cached_and_reused(fp32_graph, images, tmp_path):
    first = calibrate(fp32_graph, images, tmp_path, "minmax")
    assert not first.cached and first.ranges_path.is_file()
    again = calibrate(fp32_graph, images, tmp_path, "minmax")
    assert again.cached and again.ranges_path == first.ranges_path
    other = calibrate(fp32_graph, images, tmp_path, "percentile")
    assert other.ranges_path != first.ranges_path  # keyed by method
    fewer = ImageSet(images.images[:8], None, "fewer")
    assert calibrate(fp32_graph, fewer, tmp_path, "minmax").ranges_path != first.ranges_path


def test_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(fp32_graph, images, tmp_path, caplog):
    path = calibrate(fp32_graph, images, tmp_path, "minmax").ranges_path
    path.write_text('{"calibration_method": "MinMax", "data": {tru')
    with caplog.at_level(logging.WARNING):
        rebuilt = calibrate(fp32_graph, images, tmp_path, "minmax")
    assert "is corrupt" in caplog.text and not rebuilt.cached
    assert json.loads(path.read_text())["data"]


def test_inf_in_a_range_is_a_clear_error(fp32_graph, images, tmp_path):
    overflowing = images.images.copy()
    overflowing[3] = 3e38  # finite input whose activations overflow float32 to Inf
    with pytest.raises(CalibrationRangeError, match="not finite.*NaN or Inf"):
        calibrate(fp32_graph, ImageSet(overflowing, None, "huge"), tmp_path, "minmax")
    assert list(tmp_path.iterdir()) == []  # no cache written


def test_nan_in_calibration_data_is_a_clear_error(fp32_graph, images, tmp_path):
    poisoned = images.images.copy()
    poisoned[5, 0, 10, 10] = np.nan
    with pytest.raises(CalibrationDataError, match="calibration image 5 from nan holds NaN"):
        calibrate(fp32_graph, ImageSet(poisoned, None, "nan"), tmp_path, "minmax")


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'.*minmax"):
        check_method("kl")


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_sets_of_several_sizes_and_ragged_batches_calibrate(fp32_graph, tmp_path, method):
    rng = np.random.default_rng(2)
    sets = [ImageSet(rng.standard_normal((13, 3, 64, 64), dtype=np.float32), None, "a"),
            ImageSet(rng.standard_normal((3, 3, 96, 64), dtype=np.float32), None, "b")]
    before = [s.images.copy() for s in sets]
    result = calibrate(fp32_graph, sets, tmp_path, method, batch_size=4)
    assert result.count == 16 and not result.cached
    # the caller's images are read, never written (the collector overwrites what it is given)
    assert all(np.array_equal(b, s.images) for b, s in zip(before, sets, strict=True))
    assert calibrate(fp32_graph, sets, tmp_path, method, batch_size=4).cached


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_streaming_ranges_are_onnx_runtimes_within_a_histogram_bin(fp32_graph, images, tmp_path,
                                                                   method):
    """The same ranges as ORT's own calibrator fed the same batches, one collect_data call per
    batch (histograms are merged between calls, so the grouping of batches matters)."""
    import onnxruntime.quantization.calibrate as ort_calibrate

    from attnvgg_export.calibration.calibrate import METHODS, candidate_tensors
    from attnvgg_export.calibration.calibrate import calibrate as streaming

    ours = load_tensors_data(streaming(fp32_graph, images, tmp_path, method).ranges_path)
    reference = ort_calibrate.create_calibrator(
        fp32_graph, ["Conv", "Gemm", "MaxPool"], augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=METHODS[method])
    with contextlib.redirect_stdout(io.StringIO()):
        for batch in images.batches(8):
            reference.collect_data(_Reader([batch]))
        theirs = reference.compute_data()
    assert set(ours.keys()) == set(candidate_tensors(fp32_graph)) <= set(theirs.keys())
    for name in ours.keys():
        (low, high), (ref_low, ref_high) = (np.asarray(v, np.float64).item() for v in
                                            ours[name].range_value), \
            (np.asarray(v, np.float64).item() for v in theirs[name].range_value)
        collector = getattr(reference, "collector", None)  # minmax has none
        histogram = collector.histogram_dict.get(name) if collector else None
        bin_width = 0.0 if histogram is None else float(histogram[1][1] - histogram[1][0])
        # + float32 rounding: the sessions differ (ours optimizes the graph, ORT's does not)
        slack = bin_width * 1.001 + 1e-6 * max(abs(ref_low), abs(ref_high), 1.0)
        assert abs(high - ref_high) <= slack, (name, high, ref_high, bin_width)
        assert abs(low - ref_low) <= slack, (name, low, ref_low, bin_width)


class _Reader:
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


def test_histogram_settings_are_onnx_runtimes_defaults(fp32_graph, tmp_path):
    from onnxruntime.quantization.calibrate import create_calibrator

    from attnvgg_export.calibration.calibrate import HISTOGRAM_SETTINGS, METHODS

    for method, settings in HISTOGRAM_SETTINGS.items():
        calibrator = create_calibrator(fp32_graph, ["Conv"], str(tmp_path / f"{method}.onnx"),
                                       calibrate_method=METHODS[method])
        for key, value in settings.items():
            assert getattr(calibrator, key) == value, (method, key)


def test_calibration_memory_does_not_grow_with_the_number_of_images(fp32_graph, tmp_path):
    """Peak memory of a calibration on N and on 4N images, each in a fresh process."""
    script = (
        "import resource, sys, numpy as np\n"
        "from pathlib import Path\n"
        "from attnvgg_export.calibration.calibrate import calibrate\n"
        "from attnvgg_export.calibration.data import ImageSet\n"
        "n = int(sys.argv[1])\n"
        "rng = np.random.default_rng(0)\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "images = ImageSet(rng.standard_normal((n, 3, 160, 160), dtype=np.float32), None, 'x')\n"
        "calibrate(Path(sys.argv[2]), images, Path(sys.argv[3]), 'percentile')\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((peak - base) // 1024 - images.images.nbytes // 2**20)\n")
    peaks = []
    for n in (24, 96):
        result = subprocess.run([sys.executable, "-c", script, str(n), str(fp32_graph),
                                 str(tmp_path / str(n))], capture_output=True, text=True,
                                timeout=300, cwd=Path(__file__).resolve().parents[2])
        assert result.returncode == 0, result.stderr[-2000:]
        peaks.append(int(result.stdout.split()[-1]))
    # held at once (as ORT's calibrators hold a collect_data call's), the activations would add
    # ~6 MB per image here: 24 -> 96 images would add ~440 MB
    small, large = peaks
    assert large <= small * 1.15 + 30, peaks


def _percentile_collector(growth_bound):
    from attnvgg_export.calibration.calibrate import HISTOGRAM_SETTINGS, UniformHistogramCollector

    return UniformHistogramCollector(method="percentile", scenario="same", growth_bound=growth_bound,
                                     **HISTOGRAM_SETTINGS["percentile"])


def _synthetic_batches(count=16):
    """Activations as calibration sees them: a ReLU output, a signed conv output whose scale
    drifts batch to batch with outliers arriving late, and a heavy-tailed logit tensor."""
    rng = np.random.default_rng(3)
    for b in range(count):
        conv = rng.standard_normal((8, 16, 32, 32)).astype(np.float32) * (1 + 0.1 * b)
        if b == count - 3:
            conv[0, 0, :4, :4] *= 40
        yield {"relu": np.maximum(conv, 0), "conv": conv,
               "logits": rng.standard_cauchy((8, 64)).astype(np.float32)}


def test_percentile_from_the_deciding_bins_only_is_the_full_histograms():
    """After the first batch, the percentile method bins only the values that can still decide
    the percentile; the ranges are those of counting every bin of every batch."""
    full, tail = _percentile_collector(None), _percentile_collector(16.0)
    with contextlib.redirect_stdout(io.StringIO()):
        for batch in _synthetic_batches():
            full.collect({k: v.copy() for k, v in batch.items()})  # arrays are consumed
            tail.collect(batch)
        expected, found = full.compute_percentile(), tail.compute_percentile()
    for name, (counts, *_) in tail.histogram_dict.items():  # nearly every value lies below
        assert counts[:tail._first_deciding_bin(name, counts)].sum() > 0.99 * counts.sum(), name
    for name in expected:
        width = float(full.histogram_dict[name][1][1] - full.histogram_dict[name][1][0])
        for ours, theirs in zip(found[name][:2], expected[name][:2], strict=True):
            # the same bin, up to one value rounded across an edge (histc's range differs)
            assert abs(float(ours) - float(theirs)) <= width * 1.001, (name, ours, theirs)


def test_a_growth_bound_too_small_fails_instead_of_returning_inexact_ranges():
    collector = _percentile_collector(4.0)  # 16 batches arrive
    with contextlib.redirect_stdout(io.StringIO()):
        for batch in _synthetic_batches():
            collector.collect(batch)
        with pytest.raises(RuntimeError, match="growth_bound"):
            collector.compute_percentile()


def test_growth_bound_counts_larger_images_by_their_pixels():
    from attnvgg_export.calibration.calibrate import growth_bound

    def images(n, h, w):
        return ImageSet(np.zeros((n, 3, h, w), np.float32), None, "x")

    assert growth_bound([images(20, 64, 64)], 8) == 20 / 8
    # 5 images of 4x the pixels count 4 times; smaller ones still count once (pooled tensors)
    assert growth_bound([images(20, 64, 64), images(5, 128, 128), images(4, 32, 32)], 8) \
        == (20 + 5 * 4 + 4) / 8
    assert growth_bound([images(3, 64, 64)], 8) == 3 / 3
