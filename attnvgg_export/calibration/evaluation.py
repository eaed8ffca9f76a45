"""EVAL_DIR: the user's labelled images, kept apart from CALIB_DIR, of any size, streamed.

An ImageFolder layout (one sub-folder per class) or an .npz with ``images`` and ``labels``.
Class folders map to the checkpoint's classes by name where the manifest has labels (LABELS),
else by sorted order, which must then match NUM_CLASSES. Each image is identified by the sha256
of its bytes, and decoded a batch (a ``Unit``) at a time where it is read, on this machine or a
cluster's worker, so 50,000 of them cost one batch of memory per worker; an undecodable file is
skipped and named, and left out of the set's sha256, in every reading alike. An .npz is loaded
whole by each process that decodes it: a set of ImageNet's size belongs in a folder.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from attnvgg_runtime.files import sha256_file

from .data import UNREADABLE, image_transform, list_images, to_rgb, transform_image, unreadable_reason
from .errors import CalibrationDataError
from .preprocessing import Preprocessing


@dataclass(frozen=True)
class Unit:
    """A batch of the set, the unit of work and of resumption: which entries, their labels and
    the sha256 of each image's bytes (what a stored result is keyed by)."""

    index: int
    source: str
    entries: tuple  # file paths (str), or indices into the .npz's ``images``
    labels: tuple[int, ...]
    image_sha256: tuple[str, ...]


@dataclass
class EvalSet:
    """A labelled evaluation set: what it is, each image's identity, and its batches."""

    source: str
    labels: np.ndarray  # the checkpoint's class index of each entry
    class_names: list[str]  # as found (folder names), in the order of the entries' classes
    _entries: list  # files, or indices into the .npz array
    image_sha256: list[str] = field(default_factory=list)  # of each entry's bytes (identify)

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, progress: bool = True) -> None:
        """The sha256 of every image's bytes (a file's, or the array element's), once."""
        if self.image_sha256:
            return
        array = _array(self.source) if self.source.endswith(".npz") else None
        self.image_sha256 = [
            sha256_file(entry) if array is None else hashlib.sha256(array[entry].tobytes()).hexdigest()
            for entry in tqdm(self._entries, desc="EVAL_DIR: identifying images", unit="image",
                              leave=False, disable=not progress)]

    def units(self, size: int) -> list[Unit]:
        self.identify()
        return [Unit(k, self.source, tuple(str(e) if isinstance(e, Path) else int(e)
                                           for e in self._entries[start:start + size]),
                     tuple(int(y) for y in self.labels[start:start + size]),
                     tuple(self.image_sha256[start:start + size]))
                for k, start in enumerate(range(0, len(self._entries), size))]

    def entry_id(self, i: int) -> str:
        """How the set's record names entry ``i`` (ids_sha256 hashes these)."""
        entry = self._entries[i]
        if isinstance(entry, Path):
            return f"{entry.relative_to(self.source).as_posix()}@{self.image_sha256[i][:16]}"
        return f"{self.source}[{entry}]"

    def why_skipped(self, i: int) -> str:
        """Why entry ``i`` could not be read (for the record; its reading already failed)."""
        entry = self._entries[i]
        if not isinstance(entry, Path):
            return "undecodable"
        try:
            with Image.open(entry) as image:
                image.load()
        except UNREADABLE as e:
            return unreadable_reason(e)
        return "undecodable"

    def ids_sha256(self, decoded: np.ndarray) -> str:
        """Of the entries decoded (``decoded``: a mask over the entries)."""
        return hashlib.sha256("\n".join(self.entry_id(i) for i in np.flatnonzero(decoded))
                              .encode()).hexdigest()


def _array(source: str) -> np.ndarray:
    stat = Path(source).stat()
    return _array_of(source, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)  # a worker decodes many units of one set (keyed by its version)
def _array_of(source: str, _mtime_ns: int, _size: int) -> np.ndarray:
    with np.load(source, allow_pickle=False) as loaded:
        return loaded["images"]


def decode_unit(unit: Unit, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(the unit's decodable images, preprocessed, stacked; which entries they are, a mask).
    A file whose bytes are not those identified is refused: on a cluster, a node that sees
    another copy of EVAL_DIR would otherwise key its results to images it did not read."""
    images, decoded = [], []
    npz = unit.source.endswith(".npz")
    array = _array(unit.source) if npz else None
    transform = image_transform(pre) if npz else None
    for entry, expected in zip(unit.entries, unit.image_sha256, strict=True):
        data = Path(entry).read_bytes() if not npz else array[entry].tobytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise CalibrationDataError(
                f"EVAL_DIR image {entry} of {unit.source} changed since the evaluation identified it "
                f"(or this machine sees another copy of it): its sha256 differs; run again")
        try:
            if not npz:
                with Image.open(io.BytesIO(data)) as image:
                    images.append(transform_image(image, pre))
            elif array.dtype == np.uint8:
                images.append(transform(to_rgb(Image.fromarray(array[entry]))).numpy())
            else:
                images.append(np.asarray(array[entry], np.float32))
            decoded.append(True)
        except UNREADABLE:
            decoded.append(False)
    shape = (0, 3, *pre.crop)
    return (np.stack(images).astype(np.float32) if images else np.zeros(shape, np.float32),
            np.asarray(decoded, bool))


def _class_indices(found: list[str], num_classes: int, labels: list[str] | None,
                   where: str) -> dict[str, int]:
    if labels:
        unknown = sorted(set(found) - set(labels))
        if unknown:
            raise CalibrationDataError(
                f"{where}: class folders {unknown[:5]} are not among the checkpoint's labels "
                f"(LABELS: {', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}); name each "
                f"folder after its class")
        return {name: labels.index(name) for name in found}
    if len(found) != num_classes:
        raise CalibrationDataError(
            f"{where}: {len(found)} class folders for a checkpoint of {num_classes} classes "
            f"(NUM_CLASSES); give LABELS (one class name per line) so folders map by name, or "
            f"one folder per class")
    return {name: i for i, name in enumerate(found)}


def load_eval_set(source: str | Path, num_classes: int, labels: list[str] | None = None) -> EvalSet:
    """``source``: an ImageFolder-layout folder or an .npz with ``images`` and ``labels``."""
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise CalibrationDataError(f"EVAL_DIR file {path} does not exist")
        try:
            loaded = np.load(path, allow_pickle=False)
            if not {"images", "labels"} <= set(loaded.files):
                raise CalibrationDataError(f"{path} holds {sorted(loaded.files)}; an evaluation "
                                           f".npz needs `images` and `labels` arrays")
            found = loaded["labels"].astype(np.int64)
            count = len(_array(str(path)))
        except (ValueError, OSError) as e:
            raise CalibrationDataError(f"cannot read {path} as .npz without pickles: {e}") from None
        if found.min() < 0 or found.max() >= num_classes:
            raise CalibrationDataError(f"{path}: labels span {found.min()}..{found.max()}, outside "
                                       f"the checkpoint's {num_classes} classes (NUM_CLASSES)")
        return EvalSet(str(path), found, [str(i) for i in range(num_classes)], list(range(count)))
    files, by_order = list_images(path, "EVAL_DIR")
    if by_order is None:
        loose = [p for p in files if p.parent == path]
        raise CalibrationDataError(
            f"EVAL_DIR {path} needs ImageFolder's layout, one sub-folder of images per class; "
            f"{len(loose)} images lie directly in it (first: {loose[0].name})")
    found = sorted({p.relative_to(path).parts[0] for p in files})
    index = _class_indices(found, num_classes, labels, f"EVAL_DIR {path}")
    return EvalSet(str(path), np.asarray([index[found[i]] for i in by_order]), found, files)
