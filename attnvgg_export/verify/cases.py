"""The shape cases the gate runs: the held-out images at the opt size, and resized to the corners
of the declared range (``declared_corners``, the one definition the export's check uses too);
and the held-out set itself, rebuilt from the manifest's record of the build's split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnvgg_export.calibration.data import ImageSet, SplitCounts, load_data_split, resize_images
from attnvgg_export.calibration.preprocessing import Preprocessing
from attnvgg_runtime.manifest import Manifest, ManifestError, int8_min_side


def declared_corners(dynamic: dict) -> list[tuple[int, int, int]]:
    """(batch, height, width) at the corners of the declared range that stress it: the min batch
    at the min size and at min H and max W, the max batch at the opt size, and the max size at
    batch 4 and 2."""
    b, h, w = dynamic["batch"], dynamic["height"], dynamic["width"]
    corners = [(b["min"], h["min"], w["min"]), (b["min"], h["min"], w["max"]),
               (b["max"], h["opt"], w["opt"]),
               (min(b["max"], 4), h["max"], w["min"]), (min(b["max"], 2), h["max"], w["max"])]
    return list(dict.fromkeys(corners))


CORNER_IMAGES = 8  # the fewest images a corner shape is measured on


@dataclass(frozen=True)
class ShapeCase:
    images: np.ndarray
    labels: np.ndarray | None
    batch: int  # run in batches of this size: the declared corner's batch
    int8_gated: bool = True
    sources: int = 0  # independent images behind it (crops of one photo are one; repeats one)

    def gates(self, precision: str) -> bool:
        """Whether a breach here fails the gate for artifacts of ``precision``; where not, the
        case is measured and reported. int8 graphs are calibrated at the opt size: with a side
        under INT8_MIN_SIDE (and under the opt size's) the last stages see maps one or two pixels
        across, and int8 error there is a property of int8 rather than of a broken artifact
        (docs/precision.md)."""
        return precision != "int8" or self.int8_gated


def shape_cases(dynamic: dict, images: ImageSet, name: str = "heldout", noise: bool = False,
                seed: int = 0) -> dict[str, ShapeCase]:
    """``images`` (the held-out set for the gate, the tuning set for the layer fallback) at the
    opt size, and resized to the declared corners of ``dynamic`` (the manifest's). Each corner
    runs at its batch size over at least ``CORNER_IMAGES`` images and one full batch (images
    repeat where a batch is larger than the set), and a corner smaller than the opt size over
    as many pixels as the opt-size case (every image, up to the set's size): rel L2 is
    an aggregate, and over one image it is that image's error (which the per-image cosine budget
    bounds), over a few small images it swings with which ones they are (int8 rel L2 at
    1x3x32x448: at most 0.069 on 8 tuning images, by their budget margin of 1.74; 0.122 on 8
    held-out ones; 0.109 on all 64).
    Not gated: the smallest square size (int8 graphs calibrated at the opt size are far less
    accurate there; docs/precision.md)."""
    h, w = dynamic["height"], dynamic["width"]
    cases = {name: ShapeCase(images.images, images.labels, 8, sources=images.distinct_sources())}
    rng = np.random.default_rng(seed)
    for n, hh, ww in declared_corners(dynamic):
        count = max(n, CORNER_IMAGES)
        if hh * ww < h["opt"] * w["opt"]:  # as many pixels as the opt-size case, up to every image
            count = max(count, min(len(images), len(images) * h["opt"] * w["opt"] // (hh * ww)))
        if noise:  # resized noise is not noise: it is blur
            x = rng.standard_normal((count, 3, hh, ww), dtype=np.float32)
        else:
            x = resize_images(images.images[np.arange(count) % len(images)], hh, ww)
        int8_gated = min(hh, ww) >= int8_min_side(dynamic)
        sources = images.distinct_sources(np.arange(min(count, len(images))))
        # the images' labels where none repeats (a paired accuracy drop counts independent images)
        labels = images.labels[:count] if images.labels is not None and count <= len(images) else None
        cases[f"{n}x3x{hh}x{ww}"] = ShapeCase(x, labels, n, int8_gated, sources)
    return cases


def heldout_images(manifest: Manifest) -> ImageSet:
    """Exactly the held-out set the precision stage set aside, rebuilt from the manifest's record
    and checked by the sha256 of its image identities."""
    record = manifest.data_split
    if record is None:
        raise ManifestError("the manifest records no calibration/tuning/held-out split (a build "
                            "older than schema 1.1); rebuild it with `make engine`")
    pre = Preprocessing.from_json(manifest.preprocessing)
    split = load_data_split(record["source"], pre, SplitCounts(**record["counts"]), record["seed"],
                            subsets=("heldout",))
    if split.heldout.ids_sha256() != record["ids_sha256"]["heldout"]:
        raise ManifestError(
            f"the held-out images from {record['source']} are not the ones the build set aside "
            f"(sha256 of their identities differs): the data changed since the build; rebuild "
            f"with `make engine` so that calibration and parity see the same split")
    return split.heldout
