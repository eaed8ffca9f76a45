import logging

import numpy as np
import pytest
from PIL import Image

from calibration.data import (
    BUNDLED_CALIBRATION,
    BUNDLED_HELDOUT,
    MIN_CALIBRATION_COUNT,
    MIN_HELDOUT_COUNT,
    check_fits_range,
    load_calibration_data,
    load_image,
)
from calibration.errors import CalibrationDataError
from calibration.preprocessing import Preprocessing

PRE = Preprocessing.for_size(64, 64)


def _write_images(folder, count, size=(80, 72), suffixes=(".png", ".jpg", ".bmp", ".webp")):
    rng = np.random.default_rng(abs(hash(str(folder))) % 2**32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}{suffixes[i % len(suffixes)]}")


def test_flat_folder_recursive_and_deterministic(tmp_path):
    _write_images(tmp_path / "a", 20)
    _write_images(tmp_path / "a" / "nested", 12)
    first = load_calibration_data(tmp_path / "a", PRE, calibration=24, heldout=8)
    again = load_calibration_data(tmp_path / "a", PRE, calibration=24, heldout=8)
    assert first.calibration.images.shape == (24, 3, 64, 64)
    assert len(first.heldout) == 8
    assert first.calibration.sha256() == again.calibration.sha256()
    calibration = {img.tobytes() for img in first.calibration.images}
    assert not any(img.tobytes() in calibration for img in first.heldout.images)  # disjoint


def test_imagefolder_layout_gives_labels(tmp_path):
    for name in ("cat", "dog"):
        _write_images(tmp_path / name, 14)
    data = load_calibration_data(tmp_path, PRE, calibration=20, heldout=8)
    labels = np.concatenate([data.calibration.labels, data.heldout.labels])
    assert sorted(set(labels.tolist())) == [0, 1]


def test_empty_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="holds no image files"):
        load_calibration_data(tmp_path, PRE)


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_calibration_data(tmp_path / "nope", PRE)


def test_folder_without_decodable_images_names_the_first_bad_file(tmp_path):
    for name in ("b.png", "a.jpg"):
        (tmp_path / name).write_bytes(b"not an image at all")
    with pytest.raises(CalibrationDataError, match=r"no image .* could be decoded; first bad file: .*a\.jpg"):
        load_calibration_data(tmp_path, PRE)


def test_fewer_images_than_asked_warns_and_continues(tmp_path, caplog):
    _write_images(tmp_path, 40)
    with caplog.at_level(logging.WARNING):
        data = load_calibration_data(tmp_path, PRE, calibration=256, heldout=64)
    assert len(data.calibration) + len(data.heldout) == 40
    assert len(data.heldout) >= MIN_HELDOUT_COUNT and len(data.calibration) >= MIN_CALIBRATION_COUNT
    assert "asked for 256 calibration + 64 held-out images, found 40" in caplog.text
    assert data.notes


def test_too_few_images_is_an_error(tmp_path):
    _write_images(tmp_path, MIN_CALIBRATION_COUNT + MIN_HELDOUT_COUNT - 1)
    with pytest.raises(CalibrationDataError, match="only 23 usable images.*at least 24"):
        load_calibration_data(tmp_path, PRE)


def test_grayscale_rgba_and_16_bit_images_are_converted(tmp_path):
    Image.fromarray(np.full((70, 70), 200, np.uint8), "L").save(tmp_path / "gray.png")
    rgba = np.zeros((70, 70, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((70, 70), 65535, np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((70, 70), 32896, np.uint16)).save(tmp_path / "mid16.png")
    assert Image.open(tmp_path / "white16.png").mode.startswith("I")

    def pixel(name):  # back to 0..1 from the normalized tensor
        x = load_image(tmp_path / name, PRE)
        assert x.shape == (3, 64, 64)
        return x[:, 32, 32] * np.array(PRE.std) + np.array(PRE.mean)

    np.testing.assert_allclose(pixel("gray.png"), [200 / 255] * 3, atol=1e-3)
    np.testing.assert_allclose(pixel("rgba.png"), [1, 0, 0], atol=1e-3)  # alpha dropped
    np.testing.assert_allclose(pixel("white16.png"), [1, 1, 1], atol=1e-3)  # not clipped garbage
    np.testing.assert_allclose(pixel("mid16.png"), [128 / 255] * 3, atol=2e-3)


def test_npz_uint8_images_with_labels_and_npy_tensors(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (30, 40, 40), dtype=np.uint8),
             labels=np.arange(30) % 3)
    data = load_calibration_data(tmp_path / "d.npz", PRE, calibration=20, heldout=10)
    assert data.calibration.images.shape == (20, 3, 64, 64) and len(data.heldout.labels) == 10
    np.save(tmp_path / "t.npy", rng.standard_normal((30, 3, 64, 96), dtype=np.float32))
    tensors = load_calibration_data(tmp_path / "t.npy", PRE, calibration=20, heldout=10)
    assert tensors.calibration.images.shape == (20, 3, 64, 96)
    np.save(tmp_path / "bad.npy", np.zeros((5, 7), np.float32))
    with pytest.raises(CalibrationDataError, match=r"shape \(5, 7\)"):
        load_calibration_data(tmp_path / "bad.npy", PRE)


def test_bundled_photographs_by_default_split_by_photo():
    assert not set(BUNDLED_CALIBRATION) & set(BUNDLED_HELDOUT)
    data = load_calibration_data(None, PRE, calibration=20, heldout=6)
    again = load_calibration_data(None, PRE, calibration=20, heldout=6)
    assert data.calibration.images.shape == (20, 3, 64, 64) and len(data.heldout) == 6
    assert data.calibration.sha256() == again.calibration.sha256()
    assert "scikit-image" in data.calibration.source
    assert abs(float(data.calibration.images.mean())) < 1.5  # real photos, normalized


def test_noise_only_when_asked():
    data = load_calibration_data("noise", PRE, calibration=20, heldout=6)
    assert data.calibration.source == "random noise" and "noise" in data.notes[0]


def test_calibration_shape_must_fit_the_declared_range():
    images = np.zeros((2, 3, 64, 80), np.float32)
    with pytest.raises(CalibrationDataError, match=r"\(3, 64, 80\), outside the declared range"):
        check_fits_range(images, (32, 448), (32, 448), "file x.npy")
    check_fits_range(np.zeros((2, 3, 64, 96), np.float32), (32, 448), (32, 448), "ok")
