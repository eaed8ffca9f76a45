"""EVAL_DIR: the user's labelled images, kept apart from CALIB_DIR, of any size, streamed.

An ImageFolder layout (one sub-folder per class) or an .npz with ``images`` and ``labels``.
Class folders map to the checkpoint's classes by name where the manifest has labels (LABELS),
else by sorted order, which must then match NUM_CLASSES. Images are decoded a batch at a time,
so 10,000 of them cost one batch of memory; an undecodable file is skipped and named, and its
identity left out of the set's sha256, in every pass over the set alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnvgg_runtime.files import sha256_file

from .data import image_transform, list_images, load_image, to_rgb
from .errors import CalibrationDataError
from .preprocessing import Preprocessing


@dataclass
class EvalSet:
    """A labelled evaluation set: what it is, and its images a batch at a time."""

    source: str
    labels: np.ndarray  # the checkpoint's class index of each entry
    class_names: list[str]  # as found (folder names), in the order of the entries' classes
    _entries: list  # files, or indices into the .npz array
    _array: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)  # undecodable files, by name
    ids: list[str] = field(default_factory=list)  # the identities of the decoded entries
    identified: bool = False  # a whole pass recorded skipped and ids: later passes only decode

    def __len__(self) -> int:
        return len(self._entries)

    def batches(self, pre: Preprocessing, size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) a batch at a time; undecodable files are skipped and recorded, and
        each file hashed for its identity, on the first whole pass only."""
        identify = not self.identified
        if identify:
            self.skipped, self.ids = [], []
        transform = image_transform(pre) if self._array is not None else None
        for start in range(0, len(self._entries), size):
            images, labels = [], []
            for i in range(start, min(start + size, len(self._entries))):
                entry = self._entries[i]
                try:
                    if self._array is None:
                        images.append(load_image(entry, pre))
                    elif self._array.dtype == np.uint8:
                        images.append(transform(to_rgb(Image.fromarray(self._array[entry]))).numpy())
                    else:
                        images.append(self._array[entry])
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                    if identify:
                        self.skipped.append(f"{entry} ({type(e).__name__})")
                    continue
                if identify:
                    self.ids.append(f"{entry.relative_to(self.source).as_posix()}@"
                                    f"{sha256_file(entry)[:16]}" if self._array is None
                                    else f"{self.source}[{entry}]")
                labels.append(self.labels[i])
            if images:
                yield np.stack(images).astype(np.float32), np.asarray(labels)
        self.identified = True

    def ids_sha256(self) -> str:
        """Of the decoded entries (known after the first whole pass of ``batches``)."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()


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
            array, found = loaded["images"], loaded["labels"].astype(np.int64)
        except (ValueError, OSError) as e:
            raise CalibrationDataError(f"cannot read {path} as .npz without pickles: {e}") from None
        if found.min() < 0 or found.max() >= num_classes:
            raise CalibrationDataError(f"{path}: labels span {found.min()}..{found.max()}, outside "
                                       f"the checkpoint's {num_classes} classes (NUM_CLASSES)")
        return EvalSet(str(path), found, [str(i) for i in range(num_classes)],
                       list(range(len(array))), array)
    files, by_order = list_images(path, "EVAL_DIR")
    if by_order is None:
        loose = [p for p in files if p.parent == path]
        raise CalibrationDataError(
            f"EVAL_DIR {path} needs ImageFolder's layout, one sub-folder of images per class; "
            f"{len(loose)} images lie directly in it (first: {loose[0].name})")
    found = sorted({p.relative_to(path).parts[0] for p in files})
    index = _class_indices(found, num_classes, labels, f"EVAL_DIR {path}")
    return EvalSet(str(path), np.asarray([index[found[i]] for i in by_order]), found, files)
