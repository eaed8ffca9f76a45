"""Calibration and held-out data: image folders, .npy/.npz tensors, or bundled photographs.

Every image goes through one preprocessing definition (calibration.preprocessing), the one the
manifest records for runtimes. The sample is deterministic, and the held-out set used for parity
never shares an image with the calibration set.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2 as T
from tqdm import tqdm

from .errors import CalibrationDataError
from .preprocessing import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_CALIBRATION_COUNT = 256
DEFAULT_HELDOUT_COUNT = 64
MIN_CALIBRATION_COUNT = 16
MIN_HELDOUT_COUNT = 8
# Colour photographs shipped inside scikit-image's wheel. Split by photo, so that no held-out
# view is a crop of a calibration photo (the two motorcycle frames stay together).
BUNDLED_CALIBRATION = ("astronaut.png", "hubble_deep_field.jpg", "ihc.png",
                       "motorcycle_left.png", "motorcycle_right.png", "retina.jpg")
BUNDLED_HELDOUT = ("chelsea.png", "coffee.png", "rocket.jpg")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed NCHW float32 images, with labels where the source has them."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.images), size):
            yield self.images[start:start + size]


@dataclass(frozen=True)
class CalibrationData:
    calibration: ImageSet
    heldout: ImageSet
    preprocessing: Preprocessing
    notes: tuple[str, ...] = ()


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette and RGBA (alpha dropped) to RGB; 16-bit scaled to 8-bit, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(values * (255 / 65535)).clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def image_transform(pre: Preprocessing) -> T.Compose:
    """PIL image -> normalized CHW float32. Resize and crop act on the PIL image (PIL's bilinear
    resize), so that a runtime with only PIL and numpy reproduces it exactly
    (consumer/classify.py)."""
    return T.Compose([
        T.Resize(pre.resize, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(list(pre.crop)),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(pre.mean), list(pre.std)),
    ])


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    with Image.open(path) as image:
        return image_transform(pre)(to_rgb(image)).numpy()


def list_images(folder: Path) -> tuple[list[Path], list[int] | None]:
    """Files under ``folder`` (recursive), sorted; labels when it has ImageFolder's layout."""
    if not folder.is_dir():
        raise CalibrationDataError(f"calibration folder {folder} does not exist or is not a folder; "
                                   f"set CALIB_DIR to a folder of images or a .npy/.npz file")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationDataError(f"calibration folder {folder} holds no image files "
                                   f"({', '.join(IMAGE_SUFFIXES)}); add images or point CALIB_DIR "
                                   f"elsewhere")
    classes = sorted({p.relative_to(folder).parts[0] for p in files if p.parent != folder})
    if classes and all(p.parent != folder for p in files):
        index = {name: i for i, name in enumerate(classes)}
        return files, [index[p.relative_to(folder).parts[0]] for p in files]
    return files, None


def _decode_all(files: Sequence[Path], labels: Sequence[int] | None, pre: Preprocessing,
                desc: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    images, kept_labels, bad = [], [], []
    for i, path in enumerate(tqdm(files, desc=desc, unit="img", leave=False)):
        try:
            images.append(load_image(path, pre))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            bad.append(f"{path} ({type(e).__name__})")
            continue
        if labels is not None:
            kept_labels.append(labels[i])
    return images, kept_labels, bad


def split_counts(available: int, calibration: int, heldout: int) -> tuple[int, int, list[str]]:
    """How many images go to each set; warn when fewer than asked, refuse below the minimum."""
    if available >= calibration + heldout:
        return calibration, heldout, []
    heldout_used = min(heldout, max(MIN_HELDOUT_COUNT, available // 5))
    calibration_used = available - heldout_used
    if calibration_used < MIN_CALIBRATION_COUNT:
        raise CalibrationDataError(
            f"only {available} usable images: calibration needs at least "
            f"{MIN_CALIBRATION_COUNT + MIN_HELDOUT_COUNT} ({MIN_CALIBRATION_COUNT} to calibrate, "
            f"{MIN_HELDOUT_COUNT} held out for parity); add images")
    note = (f"asked for {calibration} calibration + {heldout} held-out images, found {available}: "
            f"using {calibration_used} + {heldout_used}")
    log.warning(note)
    return calibration_used, heldout_used, [note]


def _split(images: np.ndarray, labels: np.ndarray | None, n_cal: int, n_held: int, source: str,
           pre: Preprocessing, notes: list[str]) -> CalibrationData:
    """The first n_cal (already shuffled) images calibrate, the next n_held are held out."""
    def part(chosen: slice) -> ImageSet:
        return ImageSet(images[chosen], None if labels is None else labels[chosen], source)

    return CalibrationData(part(slice(0, n_cal)), part(slice(n_cal, n_cal + n_held)), pre,
                           tuple(notes))


def from_folder(folder: Path, pre: Preprocessing, calibration: int, heldout: int,
                seed: int = 0) -> CalibrationData:
    files, labels = list_images(folder)
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    files = [files[i] for i in order]
    labels = [labels[i] for i in order] if labels is not None else None
    images, kept_labels, bad = _decode_all(files, labels, pre, f"decoding {folder.name}")
    if not images:
        raise CalibrationDataError(f"no image in {folder} could be decoded; first bad file: {bad[0]}")
    notes = [f"skipped {len(bad)} undecodable files, first: {bad[0]}"] if bad else []
    n_cal, n_held, split_notes = split_counts(len(images), calibration, heldout)
    label_array = np.asarray(kept_labels) if labels is not None else None
    return _split(np.stack(images).astype(np.float32), label_array, n_cal, n_held,
                  f"folder {folder}", pre, notes + split_notes)


def from_array_file(path: Path, pre: Preprocessing, calibration: int, heldout: int,
                    seed: int = 0) -> CalibrationData:
    """(N, 3, H, W) float arrays are taken as preprocessed; (N, H, W[, C]) uint8 as images."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = sorted(loaded.files)
            key = "images" if "images" in keys else keys[0]
            labels = loaded["labels"] if "labels" in keys else None
            array = loaded[key]
        else:
            array, labels = loaded, None
    except (ValueError, OSError, IndexError) as e:
        raise CalibrationDataError(f"cannot read {path} as .npy/.npz without pickles: {e}") from None
    if array.dtype == np.uint8 and array.ndim in (3, 4):
        transform = image_transform(pre)
        array = np.stack([transform(to_rgb(Image.fromarray(a))).numpy()
                          for a in tqdm(array, desc=f"preprocessing {path.name}", leave=False)])
    elif not (array.ndim == 4 and array.shape[1] == 3 and np.issubdtype(array.dtype, np.floating)):
        raise CalibrationDataError(
            f"{path} holds an array of shape {array.shape} and dtype {array.dtype}; expected "
            f"preprocessed float (N, 3, H, W) or uint8 images (N, H, W[, 3])")
    order = np.random.default_rng(seed).permutation(len(array))
    array = array[order].astype(np.float32)
    labels = labels[order] if labels is not None else None
    n_cal, n_held, notes = split_counts(len(array), calibration, heldout)
    return _split(array, labels, n_cal, n_held, f"file {path}", pre, notes)


def _bundled_views(names: Sequence[str], count: int, pre: Preprocessing, seed: int) -> np.ndarray:
    """``count`` deterministic random-resized crops and flips of the bundled photographs."""
    folder = importlib.resources.files("skimage") / "data"
    photos = [to_rgb(Image.open(folder / name)) for name in names]
    augment = T.Compose([
        T.ToImage(),
        T.RandomResizedCrop(list(pre.crop), scale=(0.25, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(pre.mean), list(pre.std)),
    ])
    with torch.random.fork_rng(devices=[]):  # deterministic, and the caller's RNG is untouched
        torch.manual_seed(seed)
        views = [augment(photos[i % len(photos)]).numpy() for i in range(count)]
    return np.stack(views).astype(np.float32)


def bundled_photos(pre: Preprocessing, calibration: int, heldout: int, seed: int = 0) -> CalibrationData:
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise CalibrationDataError("the default calibration photos come with scikit-image; "
                                   "install it (pip install scikit-image) or set CALIB_DIR") from None
    source = "scikit-image's bundled photographs (deterministic crops and flips)"
    return CalibrationData(
        ImageSet(_bundled_views(BUNDLED_CALIBRATION, calibration, pre, seed), None, source),
        ImageSet(_bundled_views(BUNDLED_HELDOUT, heldout, pre, seed + 1), None, source),
        pre, (f"no CALIB_DIR given: {source}",))


def random_noise(pre: Preprocessing, calibration: int, heldout: int, seed: int = 0) -> CalibrationData:
    """Only when asked for explicitly: ranges from noise say little about real images."""
    rng = np.random.default_rng(seed)
    h, w = pre.crop
    make = lambda n: rng.standard_normal((n, 3, h, w), dtype=np.float32)  # noqa: E731
    return CalibrationData(ImageSet(make(calibration), None, "random noise"),
                           ImageSet(make(heldout), None, "random noise"), pre,
                           ("calibrated on random noise, as asked: int8 ranges may not fit real images",))


def load_calibration_data(source: str | Path | None, pre: Preprocessing,
                          calibration: int = DEFAULT_CALIBRATION_COUNT,
                          heldout: int = DEFAULT_HELDOUT_COUNT, seed: int = 0) -> CalibrationData:
    """``source``: a folder, a .npy/.npz file, None for the bundled photos, or "noise"."""
    if source is None or source == "":
        return bundled_photos(pre, calibration, heldout, seed)
    if source == "noise":
        return random_noise(pre, calibration, heldout, seed)
    path = Path(source)
    if path.suffix in (".npy", ".npz"):
        if not path.is_file():
            raise CalibrationDataError(f"calibration file {path} does not exist")
        return from_array_file(path, pre, calibration, heldout, seed)
    return from_folder(path, pre, calibration, heldout, seed)


def check_fits_range(images: np.ndarray, height: tuple[int, int], width: tuple[int, int],
                     source: str) -> None:
    """The calibration tensors must be a shape the exported graph declares."""
    _, channels, h, w = images.shape
    if channels != 3 or not (height[0] <= h <= height[1] and width[0] <= w <= width[1]) or h % 32 or w % 32:
        raise CalibrationDataError(
            f"calibration data from {source} has shape {tuple(images.shape[1:])}, outside the "
            f"declared range (3, {height[0]}-{height[1]}, {width[0]}-{width[1]}, multiples of 32); "
            f"preprocess to a size inside it")
