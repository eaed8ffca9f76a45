import logging

import numpy as np
import pytest
from PIL import Image

from attnvgg_export.calibration.data import (
    BUNDLED_PHOTOS,
    MIN_COUNTS,
    SPLITS,
    SplitCounts,
    check_fits_range,
    load_data_split,
    load_image,
    resize_images,
)
from attnvgg_export.calibration.errors import CalibrationDataError
from attnvgg_export.calibration.preprocessing import Preprocessing
from benchmarks.bad_inputs import bomb_png

PRE = Preprocessing.for_size(64, 64)
SMALL = SplitCounts(calibration=24, tuning=8, heldout=8)


def _write_images(folder, count, size=(80, 72), suffixes=(".png", ".jpg", ".bmp", ".webp")):
    rng = np.random.default_rng(abs(hash(str(folder))) % 2**32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}{suffixes[i % len(suffixes)]}")


def _assert_disjoint(split):
    """No image identity, and no image, is in two sets."""
    ids = [set(getattr(split, name).ids) for name in SPLITS]
    assert all(len(i) == len(getattr(split, n).ids) for i, n in zip(ids, SPLITS, strict=True))
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    pixels = [{img.tobytes() for img in getattr(split, name).images} for name in SPLITS]
    assert not (pixels[0] & pixels[1] or pixels[0] & pixels[2] or pixels[1] & pixels[2])


def _sources(tmp_path):
    """Every kind of source, each with enough images for SMALL."""
    _write_images(tmp_path / "flat", 30)
    _write_images(tmp_path / "flat" / "nested", 12)
    for name in ("cat", "dog"):
        _write_images(tmp_path / "classes" / name, 22)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (44, 40, 40), dtype=np.uint8),
             labels=np.arange(44) % 3)
    np.save(tmp_path / "t.npy", rng.standard_normal((44, 3, 64, 64), dtype=np.float32))
    return [tmp_path / "flat", tmp_path / "classes", tmp_path / "d.npz", tmp_path / "t.npy",
            None, "noise"]


def test_every_source_splits_into_three_disjoint_deterministic_sets(tmp_path):
    for source in _sources(tmp_path):
        split = load_data_split(source, PRE, SMALL, seed=3)
        again = load_data_split(source, PRE, SMALL, seed=3)
        _assert_disjoint(split)
        assert [len(getattr(split, n)) for n in SPLITS] == [24, 8, 8], source
        assert split.record() == again.record(), source
        assert split.heldout.sha256() == again.heldout.sha256(), source
        record = split.record()
        assert record["counts"] == SMALL.to_json() and record["seed"] == 3
        other = load_data_split(source, PRE, SMALL, seed=4).record()["ids_sha256"]
        assert other != record["ids_sha256"], source  # another seed, another split


def test_the_held_out_set_alone_is_the_same_set(tmp_path):
    """Parity decodes only the held-out set; it must be exactly the one the build set aside."""
    for source in _sources(tmp_path):
        full = load_data_split(source, PRE, SMALL, seed=1)
        alone = load_data_split(source, PRE, SMALL, seed=1, subsets=("heldout",))
        assert len(alone.calibration) == 0 and alone.calibration.ids == full.calibration.ids
        assert alone.heldout.ids == full.heldout.ids
        np.testing.assert_array_equal(alone.heldout.images, full.heldout.images)
        assert alone.record() == full.record(), source


def test_a_changed_file_changes_the_identity(tmp_path):
    _write_images(tmp_path, 40)
    before = load_data_split(tmp_path, PRE, SMALL).record()["ids_sha256"]
    heldout_file = load_data_split(tmp_path, PRE, SMALL).heldout.ids[0].split("@")[0]
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / heldout_file)
    after = load_data_split(tmp_path, PRE, SMALL).record()["ids_sha256"]
    assert after["heldout"] != before["heldout"] and after["calibration"] == before["calibration"]


def test_imagefolder_layout_gives_labels(tmp_path):
    for name in ("cat", "dog"):
        _write_images(tmp_path / name, 20)
    data = load_data_split(tmp_path, PRE, SMALL)
    labels = np.concatenate([data.calibration.labels, data.tuning.labels, data.heldout.labels])
    assert sorted(set(labels.tolist())) == [0, 1] and len(labels) == 40


def test_empty_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="holds no image files"):
        load_data_split(tmp_path, PRE)


def test_missing_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_data_split(tmp_path / "nope", PRE)


def test_folder_without_decodable_images_names_a_bad_file(tmp_path):
    for i in range(MIN_COUNTS.total):
        (tmp_path / f"broken{i:02d}.jpg").write_bytes(b"not an image at all")
    with pytest.raises(CalibrationDataError, match=r"no calibration image .* could be read; "
                                                   r"first: .*broken\d+\.jpg \(undecodable"):
        load_data_split(tmp_path, PRE, MIN_COUNTS)


def test_an_undecodable_file_is_dropped_from_its_set_with_a_note(tmp_path):
    _write_images(tmp_path, 40)
    heldout_file = load_data_split(tmp_path, PRE, SMALL).heldout.ids[0].split("@")[0]
    (tmp_path / heldout_file).write_bytes(b"truncated")
    data = load_data_split(tmp_path, PRE, SMALL)
    assert len(data.heldout) == 7 and len(data.calibration) == 24
    assert any("heldout: skipped 1 unreadable" in note for note in data.notes)


@pytest.mark.parametrize("subset", ["calibration", "tuning", "heldout"])
def test_an_undecodable_file_never_shifts_the_split_the_gate_rebuilds(tmp_path, subset):
    # the gate decodes only the held-out set, cut again by the counts the build recorded; the
    # build decodes all three. With a bad file in any of them both see the same held-out
    # identities (issue 41: the recorded counts left the bad file out, and the gate's cut moved)
    _write_images(tmp_path, 40)
    bad = getattr(load_data_split(tmp_path, PRE, SMALL), subset).ids[1].split("@")[0]
    (tmp_path / bad).write_bytes(b"truncated")
    build = load_data_split(tmp_path, PRE, SMALL)
    record = build.record()
    gate = load_data_split(tmp_path, PRE, SplitCounts(**record["counts"]), record["seed"],
                           subsets=("heldout",))
    assert gate.heldout.ids_sha256() == build.heldout.ids_sha256() == record["ids_sha256"]["heldout"]
    assert record["counts"] == SMALL.to_json()
    assert record["skipped"] == [{"set": subset, "file": bad,
                                  "reason": "undecodable (UnidentifiedImageError)"}]
    assert any(f"{subset}: skipped 1 unreadable" in n and bad in n for n in build.notes)


def test_a_decompression_bomb_is_skipped_and_tiny_sources_are_reported(tmp_path):
    """An image over PIL's pixel limit is a skipped file with its reason (it was a traceback), and
    images upscaled from a few pixels are said so."""
    _write_images(tmp_path, 38, size=(40, 40))
    _write_images(tmp_path / "tiny", 2, size=(4, 4), suffixes=(".png",))
    bomb_png(tmp_path / "bomb.png")
    build = load_data_split(tmp_path, PRE, SplitCounts(calibration=25, tuning=8, heldout=8))
    record = build.record()
    assert [(s["file"], s["reason"]) for s in record["skipped"]] == [
        ("bomb.png", "over PIL's decompression-bomb limit (196000000 pixels)")]
    assert sum(len(getattr(build, name)) for name in SPLITS) == 40
    assert sum(int(n.split(": ")[1].split()[0]) for n in build.notes if "upscaled from" in n) == 2


def test_crops_of_one_photograph_count_as_one_source():
    from attnvgg_export.calibration.data import ImageSet

    views = ImageSet(np.zeros((6, 3, 8, 8), np.float32), None, "bundled",
                     tuple(f"skimage-0.25/{name}:view{i}:seed2" for i, name in
                           enumerate(["astronaut.png", "coffee.png", "astronaut.png"] * 2)))
    assert views.distinct_sources() == 2 and views.distinct_sources([0, 2, 3]) == 1
    files = ImageSet(np.zeros((2, 3, 8, 8), np.float32), None, "folder", ("a.png@12", "b.png@34"))
    assert files.distinct_sources() == 2


def test_fewer_images_than_asked_warns_and_continues(tmp_path, caplog):
    _write_images(tmp_path, 40)
    with caplog.at_level(logging.WARNING):
        data = load_data_split(tmp_path, PRE)
    assert len(data.calibration) + len(data.tuning) + len(data.heldout) == 40
    assert len(data.tuning) >= MIN_COUNTS.tuning and len(data.heldout) >= MIN_COUNTS.heldout
    assert len(data.calibration) >= MIN_COUNTS.calibration
    assert "asked for 256 calibration + 64 tuning + 64 held-out images, found 40" in caplog.text
    assert data.notes
    _assert_disjoint(data)


def test_too_few_images_is_an_error(tmp_path):
    _write_images(tmp_path, MIN_COUNTS.total - 1)
    with pytest.raises(CalibrationDataError, match="only 31 usable images.*at least 32"):
        load_data_split(tmp_path, PRE)


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
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (40, 40, 40), dtype=np.uint8),
             labels=np.arange(40) % 3)
    data = load_data_split(tmp_path / "d.npz", PRE, SMALL)
    assert data.calibration.images.shape == (24, 3, 64, 64) and len(data.heldout.labels) == 8
    np.save(tmp_path / "t.npy", rng.standard_normal((40, 3, 64, 96), dtype=np.float32))
    tensors = load_data_split(tmp_path / "t.npy", PRE, SMALL)
    assert tensors.calibration.images.shape == (24, 3, 64, 96)
    np.save(tmp_path / "bad.npy", np.zeros((5, 7), np.float32))
    with pytest.raises(CalibrationDataError, match=r"shape \(5, 7\)"):
        load_data_split(tmp_path / "bad.npy", PRE)


def test_bundled_photographs_by_default_split_by_photo():
    photos = [set(BUNDLED_PHOTOS[name]) for name in SPLITS]
    assert not (photos[0] & photos[1] or photos[0] & photos[2] or photos[1] & photos[2])
    data = load_data_split(None, PRE, SMALL)
    assert data.calibration.images.shape == (24, 3, 64, 64) and len(data.heldout) == 8
    assert "scikit-image" in data.calibration.source and data.record()["source"] == "bundled"
    assert abs(float(data.calibration.images.mean())) < 1.5  # real photos, normalized
    for name in SPLITS:  # each view names its photograph, which belongs to that set only
        assert {i.split("/")[1].split(":")[0] for i in getattr(data, name).ids} <= set(
            BUNDLED_PHOTOS[name])


def test_noise_only_when_asked():
    data = load_data_split("noise", PRE, SMALL)
    assert data.calibration.source == "random noise" and "noise" in data.notes[0]


def test_resizing_keeps_the_images_and_reaches_the_shape():
    images = load_data_split("noise", PRE, SMALL, subsets=("heldout",)).heldout.images
    assert resize_images(images, 32, 448).shape == (8, 3, 32, 448)
    assert resize_images(images, 64, 64) is images
    smooth = np.ones((1, 3, 64, 64), np.float32) * 0.5
    np.testing.assert_allclose(resize_images(smooth, 128, 32), 0.5, atol=1e-6)


def test_calibration_shape_must_fit_the_declared_range():
    images = np.zeros((2, 3, 64, 80), np.float32)
    with pytest.raises(CalibrationDataError, match=r"\(3, 64, 80\), outside the declared range"):
        check_fits_range(images, (32, 448), (32, 448), "file x.npy")
    check_fits_range(np.zeros((2, 3, 64, 96), np.float32), (32, 448), (32, 448), "ok")
