import json
import logging

import numpy as np
import pytest

from calibration.calibrate import calibrate, check_method
from calibration.data import ImageSet
from calibration.errors import CalibrationDataError, CalibrationRangeError
from models import ConfigError


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
    result = calibrate(fp32_graph, sets, tmp_path, method, batch_size=4)
    assert result.count == 16 and not result.cached
    assert calibrate(fp32_graph, sets, tmp_path, method, batch_size=4).cached
