"""Calibration, tuning and held-out data: image folders, .npy/.npz tensors, or bundled photographs.

One source is split three ways, and no image is in two sets:

- calibration: the activation ranges of the int8 graphs come from these;
- tuning: the layer fallback measures int8 agreement on these to choose layers kept in float;
- held-out: the parity gate measures every artifact on these, and nothing else saw them.

The split is assigned before any image is decoded (a shuffled file or index list, cut in three),
so the parity gate rebuilds exactly the held-out set from the manifest's record of it (source,
seed, counts) and checks it by the sha256 of its image identities (relative path and file hash,
array index and file hash, photograph and view). Every image goes through one preprocessing
definition (attnvgg_export.calibration.preprocessing), the one the manifest records for runtimes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2 as T
from tqdm import tqdm

from attnvgg_runtime.files import sha256_file

from .errors import CalibrationDataError
from .preprocessing import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLITS = ("calibration", "tuning", "heldout")
BUNDLED, NOISE = "bundled", "noise"  # the two sources that are not files
# Photographs shipped inside scikit-image's wheel, split by photograph so that no tuning or
# held-out view is a crop of a calibration photo (the two motorcycle frames stay together).
BUNDLED_PHOTOS = {
    "calibration": ("astronaut.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                    "motorcycle_right.png", "retina.jpg"),
    "tuning": ("coffee.png", "camera.png", "coins.png"),
    "heldout": ("chelsea.png", "rocket.jpg", "gravel.png"),
}

log = logging.getLogger(__name__)
# what a file that cannot be read as an image raises (PIL's DecompressionBombError: more than
# twice Image.MAX_IMAGE_PIXELS, 179 megapixels by default); such a file is skipped and named
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
TINY_SIDE = 32  # a source image whose shorter side is below this is upscaled many times: said so


def unreadable_reason(error: Exception) -> str:
    if isinstance(error, Image.DecompressionBombError):
        pixels = str(error).split("(")[1].split()[0] if "(" in str(error) else "too many"
        return f"over PIL's decompression-bomb limit ({pixels} pixels)"
    if isinstance(error, PermissionError):
        return "not readable (permissions)"
    return f"undecodable ({type(error).__name__})"


@dataclass(frozen=True)
class SplitCounts:
    calibration: int = 256
    tuning: int = 64
    heldout: int = 64

    @property
    def total(self) -> int:
        return self.calibration + self.tuning + self.heldout

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SPLITS}


DEFAULT_COUNTS = SplitCounts()
MIN_COUNTS = SplitCounts(calibration=16, tuning=8, heldout=8)


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed NCHW float32 images, with labels where the source has them, and the
    identity of each image (what makes two sets provably disjoint)."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    ids: tuple[str, ...] = ()
    # the set's files that could not be read: (identity, reason). The split cut them into this
    # set, so they count in its size (what the gate cuts again) but not in its identities
    skipped: tuple[tuple[str, str], ...] = ()
    tiny: int = 0  # images upscaled from a shorter side below TINY_SIDE

    def __len__(self) -> int:
        return len(self.images)

    def sha256(self) -> str:
        """Of the pixels: the calibration cache key."""
        return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()

    def ids_sha256(self) -> str:
        """Of the identities: stable across machines (pixels may differ in the last bit)."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()

    def distinct_sources(self, indices: Sequence[int] | None = None) -> int:
        """How many independent images back the set (or ``indices`` of it): a file, an array
        entry, a noise draw each; the crops and flips of one bundled photograph are one."""
        if not self.ids:  # a set made in memory, without identities: each image its own
            return len(self) if indices is None else len(set(indices))
        ids = self.ids if indices is None else [self.ids[i] for i in indices]
        return len({i.split(":view")[0] for i in ids})

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.images), size):
            yield self.images[start:start + size]

    def first(self, count: int) -> ImageSet:
        """The first ``count`` images (all where fewer)."""
        return ImageSet(self.images[:count], None if self.labels is None else self.labels[:count],
                        self.source, self.ids[:count])


@dataclass(frozen=True)
class DataSplit:
    calibration: ImageSet
    tuning: ImageSet
    heldout: ImageSet
    preprocessing: Preprocessing
    source: str  # as given: a path, "bundled" or "noise"
    seed: int
    notes: tuple[str, ...] = field(default=())

    def record(self) -> dict:
        """What the manifest keeps, so that later stages rebuild the same sets."""
        sets = {name: getattr(self, name) for name in SPLITS}
        record = {"source": self.source, "description": self.heldout.source, "seed": self.seed,
                  "counts": {name: len(s.ids) + len(s.skipped) for name, s in sets.items()},
                  "ids_sha256": {name: s.ids_sha256() for name, s in sets.items()}}
        skipped = [{"set": name, "file": id_.split("@")[0], "reason": reason}
                   for name, s in sets.items() for id_, reason in s.skipped]
        return record | ({"skipped": skipped} if skipped else {})


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette and RGBA (alpha dropped) to RGB; 16-bit scaled to 8-bit, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(values * (255 / 65535)).clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


@functools.lru_cache(maxsize=8)  # load_image asks per image: one transform per preprocessing
def image_transform(pre: Preprocessing) -> T.Compose:
    """PIL image -> normalized CHW float32. Resize and crop act on the PIL image (PIL's bilinear
    resize), so that a runtime with only PIL and numpy reproduces it exactly
    (box/attnvgg_runtime/classify.py)."""
    return T.Compose([
        T.Resize(pre.resize, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(list(pre.crop)),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(pre.mean), list(pre.std)),
    ])


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    with Image.open(path) as image:
        return transform_image(image, pre)


def transform_image(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    return image_transform(pre)(to_rgb(image)).numpy()


def resize_images(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Preprocessed images at another input size (bilinear, antialiased when shrinking): the same
    images, so no split is crossed, at the shapes the declared range allows."""
    if images.shape[2:] == (height, width):
        return images
    resized = F.interpolate(torch.from_numpy(images), size=(height, width), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.numpy().astype(np.float32)


def split_counts(available: int, wanted: SplitCounts) -> tuple[SplitCounts, list[str]]:
    """How many images go to each set; warn when fewer than asked, refuse below the minimum."""
    if available >= wanted.total:
        return wanted, []
    share = available // 5
    tuning = min(wanted.tuning, max(MIN_COUNTS.tuning, share))
    heldout = min(wanted.heldout, max(MIN_COUNTS.heldout, share))
    calibration = min(wanted.calibration, available - tuning - heldout)
    if calibration < MIN_COUNTS.calibration:
        raise CalibrationDataError(
            f"only {available} usable images: calibration needs at least {MIN_COUNTS.total} "
            f"({MIN_COUNTS.calibration} to calibrate, {MIN_COUNTS.tuning} to tune the layer "
            f"fallback, {MIN_COUNTS.heldout} held out for parity); add images")
    used = SplitCounts(calibration, tuning, heldout)
    note = (f"asked for {wanted.calibration} calibration + {wanted.tuning} tuning + "
            f"{wanted.heldout} held-out images, found {available}: using {calibration} + "
            f"{tuning} + {heldout}")
    log.warning(note)
    return used, [note]


def _cut(items: Sequence, counts: SplitCounts) -> dict[str, Sequence]:
    bounds = np.cumsum([0] + [getattr(counts, name) for name in SPLITS])
    return {name: items[bounds[i]:bounds[i + 1]] for i, name in enumerate(SPLITS)}


def _build_split(source: str, pre: Preprocessing, seed: int, notes: list[str],
                 make_set: Callable[[str], ImageSet], subsets: Sequence[str]) -> DataSplit:
    """Decode only the sets asked for; the others keep their identities, with no pixels."""
    sets = {}
    for name in SPLITS:
        full = make_set(name) if name in subsets else None
        sets[name] = full if full is not None else make_set(name, decode=False)
    return DataSplit(**sets, preprocessing=pre, source=source, seed=seed, notes=tuple(notes))


def list_images(folder: Path, variable: str = "CALIB_DIR") -> tuple[list[Path], list[int] | None]:
    """Files under ``folder`` (recursive), sorted; labels when it has ImageFolder's layout.
    ``variable``: the setting that named the folder, for the errors."""
    if not folder.is_dir():
        raise CalibrationDataError(f"{variable} folder {folder} does not exist or is not a folder; "
                                   f"set {variable} to a folder of images or a .npy/.npz file")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationDataError(f"{variable} folder {folder} holds no image files "
                                   f"({', '.join(IMAGE_SUFFIXES)}); add images or point {variable} "
                                   f"elsewhere")
    classes = sorted({p.relative_to(folder).parts[0] for p in files if p.parent != folder})
    if classes and all(p.parent != folder for p in files):
        index = {name: i for i, name in enumerate(classes)}
        return files, [index[p.relative_to(folder).parts[0]] for p in files]
    return files, None


def _empty(pre: Preprocessing) -> np.ndarray:
    return np.zeros((0, 3, *pre.crop), np.float32)


def from_folder(folder: Path, pre: Preprocessing, counts: SplitCounts, seed: int = 0,
                subsets: Sequence[str] = SPLITS) -> DataSplit:
    """Shuffled files cut in three; an undecodable file is dropped from its set, with a note."""
    files, labels = list_images(folder)
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    counts, notes = split_counts(len(files), counts)
    parts = _cut(order, counts)
    description = f"folder {folder}"

    def make_set(name: str, decode: bool = True) -> ImageSet:
        chosen = parts[name]
        ids = tuple(f"{files[i].relative_to(folder).as_posix()}@{sha256_file(files[i])[:16]}"
                    for i in chosen)
        if not decode:
            return ImageSet(_empty(pre), None, description, ids)
        images, kept, bad, tiny = [], [], [], 0
        for i in tqdm(chosen, desc=f"decoding {name} images", unit="img", leave=False):
            try:
                with Image.open(files[i]) as image:
                    tiny += min(image.size) < TINY_SIDE
                    images.append(transform_image(image, pre))
                kept.append(i)
            except UNREADABLE as e:
                bad.append((i, unreadable_reason(e)))
        if bad:
            notes.append(f"{name}: skipped {len(bad)} unreadable files, first: {files[bad[0][0]]} "
                         f"({bad[0][1]})")
        if tiny:
            notes.append(f"{name}: {tiny} images upscaled from a shorter side below {TINY_SIDE} px "
                         f"to the model's {pre.resize} px: int8 ranges from them may not fit real inputs")
        if not images:
            raise CalibrationDataError(f"no {name} image in {folder} could be read; first: "
                                       f"{files[bad[0][0]]} ({bad[0][1]})")
        kept_ids = tuple(ids[chosen.index(i)] for i in kept)
        kept_labels = np.asarray([labels[i] for i in kept]) if labels is not None else None
        return ImageSet(np.stack(images).astype(np.float32), kept_labels, description, kept_ids,
                        tuple((ids[chosen.index(i)], reason) for i, reason in bad), tiny)

    return _build_split(str(folder), pre, seed, notes, make_set, subsets)


def from_array_file(path: Path, pre: Preprocessing, counts: SplitCounts, seed: int = 0,
                    subsets: Sequence[str] = SPLITS) -> DataSplit:
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
    is_images = array.dtype == np.uint8 and array.ndim in (3, 4)
    if not is_images and not (array.ndim == 4 and array.shape[1] == 3
                              and np.issubdtype(array.dtype, np.floating)):
        raise CalibrationDataError(
            f"{path} holds an array of shape {array.shape} and dtype {array.dtype}; expected "
            f"preprocessed float (N, 3, H, W) or uint8 images (N, H, W[, 3])")
    order = np.random.default_rng(seed).permutation(len(array))
    counts, notes = split_counts(len(array), counts)
    parts = _cut(order, counts)
    file_sha = sha256_file(path)[:16]
    description = f"file {path}"

    def make_set(name: str, decode: bool = True) -> ImageSet:
        chosen = parts[name]
        ids = tuple(f"{path.name}@{file_sha}[{i}]" for i in chosen)
        if not decode:
            return ImageSet(_empty(pre), None, description, ids)
        if is_images:
            transform = image_transform(pre)
            images = np.stack([transform(to_rgb(Image.fromarray(array[i]))).numpy()
                               for i in tqdm(chosen, desc=f"preprocessing {path.name}", leave=False)])
        else:
            images = array[chosen]
        return ImageSet(images.astype(np.float32), labels[chosen] if labels is not None else None,
                        description, ids)

    return _build_split(str(path), pre, seed, notes, make_set, subsets)


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
    return np.stack(views).astype(np.float32) if views else _empty(pre)


def bundled_photos(pre: Preprocessing, counts: SplitCounts, seed: int = 0,
                   subsets: Sequence[str] = SPLITS) -> DataSplit:
    try:
        import skimage
    except ImportError:
        raise CalibrationDataError("the default calibration photos come with scikit-image; "
                                   "install it (pip install scikit-image) or set CALIB_DIR") from None
    description = "scikit-image's bundled photographs (deterministic crops and flips)"

    def make_set(name: str, decode: bool = True) -> ImageSet:
        names, count = BUNDLED_PHOTOS[name], getattr(counts, name)
        set_seed = seed + SPLITS.index(name)
        ids = tuple(f"skimage-{skimage.__version__}/{names[i % len(names)]}:view{i}:seed{set_seed}"
                    for i in range(count))
        images = _bundled_views(names, count, pre, set_seed) if decode else _empty(pre)
        return ImageSet(images, None, description, ids)

    return _build_split(BUNDLED, pre, seed, [f"no CALIB_DIR given: {description}"], make_set,
                        subsets)


def random_noise(pre: Preprocessing, counts: SplitCounts, seed: int = 0,
                 subsets: Sequence[str] = SPLITS) -> DataSplit:
    """Only when asked for explicitly: ranges from noise say little about real images."""
    def make_set(name: str, decode: bool = True) -> ImageSet:
        count = getattr(counts, name)
        ids = tuple(f"noise:seed{seed}:{name}:{i}" for i in range(count))
        rng = np.random.default_rng([seed, SPLITS.index(name)])
        images = (rng.standard_normal((count, 3, *pre.crop), dtype=np.float32) if decode
                  else _empty(pre))
        return ImageSet(images, None, "random noise", ids)

    return _build_split(NOISE, pre, seed, ["random noise, as asked: int8 ranges may not fit "
                                           "real images"], make_set, subsets)


def load_data_split(source: str | Path | None, pre: Preprocessing,
                    counts: SplitCounts = DEFAULT_COUNTS, seed: int = 0,
                    subsets: Sequence[str] = SPLITS) -> DataSplit:
    """``source``: a folder, a .npy/.npz file, None or "bundled" (the bundled photos), or
    "noise". Only the sets in ``subsets`` are decoded; every set's identities are known."""
    if source in (None, "", BUNDLED):
        return bundled_photos(pre, counts, seed, subsets)
    if source == NOISE:
        return random_noise(pre, counts, seed, subsets)
    path = Path(source)
    if path.suffix in (".npy", ".npz"):
        if not path.is_file():
            raise CalibrationDataError(f"calibration file {path} does not exist")
        return from_array_file(path, pre, counts, seed, subsets)
    return from_folder(path, pre, counts, seed, subsets)


def check_fits_range(images: np.ndarray, height: tuple[int, int], width: tuple[int, int],
                     source: str) -> None:
    """The calibration tensors must be a shape the exported graph declares."""
    _, channels, h, w = images.shape
    if channels != 3 or not (height[0] <= h <= height[1] and width[0] <= w <= width[1]) or h % 32 or w % 32:
        raise CalibrationDataError(
            f"calibration data from {source} has shape {tuple(images.shape[1:])}, outside the "
            f"declared range (3, {height[0]}-{height[1]}, {width[0]}-{width[1]}, multiples of 32); "
            f"preprocess to a size inside it")
