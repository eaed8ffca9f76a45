"""The shape cases the gate runs: the held-out images at the opt size, and resized to the corners
of the declared range (``declared_corners``, the one definition the export's check uses too);
and the held-out set itself, rebuilt from the manifest's record of the build's split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnvgg_runtime.manifest import Manifest, ManifestError, int8_min_side

if TYPE_CHECKING:
    from attnvgg_export.calibration.data import ImageSet


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
# the fewest images a float graph (fp32, fp16, bf16) reads at a corner, in whole batches: there
# it proves that the graph computes eager's numbers at that shape, every image on its own (its
# worst image is at most 0.24 of rel_l2_image_max in every stored run, on every CPU:
# docs/precision.md), so a few images prove what all of them would; int8's aggregate error
# needs the pixels (shape_cases)
FLOAT_CORNER_IMAGES = 4
# what makes the cases, for the stored eager references' key (attnvgg_export.verify.references):
# bump "version" when shape_cases changes otherwise
CASES_RULE = {"version": 3, "corner_images": CORNER_IMAGES, "float_corner_images": FLOAT_CORNER_IMAGES}


@dataclass(frozen=True)
class ShapeCase:
    images: np.ndarray
    labels: np.ndarray | None
    batch: int  # run in batches of this size: the declared corner's batch
    int8_gated: bool = True
    sources: int = 0  # independent images behind it (crops of one photo are one; repeats one)
    float_images: int | None = None  # how many of the images float graphs read (None: all)
    stands_for: str | None = None  # the corner this case's run also is (the max batch at the opt size)

    def gates(self, precision: str) -> bool:
        """Whether a breach here fails the gate for artifacts of ``precision``; where not, the
        case is measured and reported. int8 graphs are calibrated at the opt size: with a side
        under INT8_MIN_SIDE (and under the opt size's) the last stages see maps one or two pixels
        across, and int8 error there is a property of int8 rather than of a broken artifact
        (docs/precision.md)."""
        return precision != "int8" or self.int8_gated


def shape_cases(dynamic: dict, images: ImageSet, name: str = "heldout", noise: bool = False,
                seed: int = 0, thorough: bool = False) -> dict[str, ShapeCase]:
    """``images`` (the held-out set for the gate, the tuning set for the layer fallback) at the
    opt size, and resized to the declared corners of ``dynamic`` (the manifest's). Each corner
    runs at its batch size over at least ``CORNER_IMAGES`` images and one full batch (images
    repeat where a batch is larger than the set), and a corner smaller than the opt size over
    as many pixels as the opt-size case (every image, up to the set's size): rel L2 is
    an aggregate, and over one image it is that image's error (which the per-image cosine budget
    bounds), over a few small images it swings with which ones they are (int8 rel L2 at
    1x3x32x448: at most 0.069 on 8 tuning images, by their budget margin of 1.74; 0.122 on 8
    held-out ones; 0.109 on all 64).
    Where the set holds at least the max batch, it runs in batches of the max batch, and that
    run is the (max batch, opt size) corner too (``stands_for``; golden I/O writes it as its own
    case, attnvgg_runtime.verify.golden). Float graphs read the first ``float_images`` of a
    corner's images (FLOAT_CORNER_IMAGES, in whole batches): what a corner proves for them holds
    image by image. ``thorough``: neither (every graph reads every image of every corner, and the
    max batch at the opt size is a corner of its own), the gate before issue 34, which
    tests/verify/test_gate_cost.py holds the lighter one's verdicts to.
    Not gated: the smallest square size (int8 graphs calibrated at the opt size are far less
    accurate there; docs/precision.md)."""
    from attnvgg_export.calibration.data import resize_images  # torchvision: imported where used

    h, w = dynamic["height"], dynamic["width"]
    largest = dynamic["batch"]["max"]
    # the opt size at the max batch is this case run in batches of the max: one run, two proofs
    merged = f"{largest}x3x{h['opt']}x{w['opt']}" if largest <= len(images) and not thorough else None
    cases = {name: ShapeCase(images.images, images.labels, largest if merged else min(8, largest),
                             sources=images.distinct_sources(), stands_for=merged)}
    rng = np.random.default_rng(seed)
    for n, hh, ww in declared_corners(dynamic):
        count = max(n, CORNER_IMAGES)
        if f"{n}x3x{hh}x{ww}" == merged:
            if noise:  # drawn and dropped: every other corner's noise is what the thorough gate reads
                rng.standard_normal((count, 3, hh, ww), dtype=np.float32)
            continue
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
        float_images = None if thorough else min(count, n * -(-FLOAT_CORNER_IMAGES // n))
        cases[f"{n}x3x{hh}x{ww}"] = ShapeCase(x, labels, n, int8_gated, sources, float_images)
    return cases


def heldout_images(manifest: Manifest) -> ImageSet:
    """Exactly the held-out set the precision stage set aside, rebuilt from the manifest's record
    and checked by the sha256 of its image identities."""
    from attnvgg_export.calibration.data import SplitCounts, load_data_split
    from attnvgg_export.calibration.preprocessing import Preprocessing

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
