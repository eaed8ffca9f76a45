"""A small trained fixture: a reduced-width variant trained on scikit-learn's handwritten digits.

Random-init VGG logits are nearly flat, so top-1 agreement on them says little. These models
are trained on the CPU on a real image task, so that int8/fp16 accuracy gaps mean something.
The digits (8x8, 16 grey levels) are upsampled to 32x32 uint8 images and go through the
toolchain's own preprocessing, the one the manifest records.

What a model learns in a few epochs depends on the CPU's kernels (oneDNN picks AMX, AVX-512 or
AVX2 paths, with different rounding), so the fixture is defined by what it reaches, not by its
recipe: it trains until its accuracy on a validation slice reaches ``TARGET_ACCURACY``, within a
bounded number of cycles, and raises ``FixtureError`` if it does not. Tests compare against
``TrainedFixture.validation_accuracy`` and chance, never against one machine's result.

Split of the 1,797 digits (seeded order): the first ``TRAIN_COUNT`` are trained on, the next
``VALIDATION_COUNT`` decide when training is done, and the last 600 are never seen in training
(calibration and held-out sets of the tests and of the accuracy table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnvgg_export import models
from attnvgg_export.calibration.data import image_transform, to_rgb
from attnvgg_export.calibration.preprocessing import Preprocessing

SIZE = 32
WIDTH = 0.125
CLASSES = 10
CHANCE = 1 / CLASSES
TRAIN_COUNT = 1000
VALIDATION_COUNT = 197
UNSEEN_START = TRAIN_COUNT + VALIDATION_COUNT  # the 600 images no training step or decision saw
# how a build splits those 600: calibration, tuning (the layer fallback), held-out (parity)
UNSEEN_SPLIT = {"calib_count": 256, "tuning_count": 96, "heldout_count": 248}
TARGET_ACCURACY = 0.95  # on the validation slice; seen reached in 24 epochs on AVX-512 and AVX2
EPOCHS_PER_CYCLE = 24
MAX_CYCLES = 3
LEARNING_RATE = 3e-3


# The se fixture as trained once and shipped: the tests read these weights, so that their verdicts
# do not depend on the CPU that would otherwise train them afresh (each ISA's kernels train a
# different model, and a planted bug sized on one is not the same bug on another). Regenerated
# by `.venv/bin/python -m benchmarks.digits --write-fixture`; tests/graphs/test_precision.py
# trains the recipe afresh too and holds it to the same target.
SHIPPED = Path(__file__).resolve().parents[1] / "tests" / "assets" / "digits-se.safetensors"


class FixtureError(RuntimeError):
    """The fixture did not reach the accuracy the tests rely on: its numbers would mean nothing."""


@dataclass(frozen=True)
class TrainedFixture:
    model: nn.Module  # eval mode
    variant: str
    validation_accuracy: float
    epochs: int


def digit_images(seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, size, size) uint8 images and their labels, in a seeded order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    pixels = (images[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    order = np.random.default_rng(seed).permutation(len(pixels))
    return pixels[order], digits.target[order]


def preprocess(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    transform = image_transform(Preprocessing.for_size(pixels.shape[1], pixels.shape[2]))
    return np.stack([transform(to_rgb(Image.fromarray(p))).numpy() for p in pixels])


def accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def _rescale(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch at a random height and width, each 1, 1.5 or 2 times its size (multi-scale
    training): a model that is to serve up to twice its size, in either direction, sees it."""
    size = batch.shape[-1]
    sides = (size, size * 3 // 2, size * 2)
    h, w = (sides[int(torch.randint(0, len(sides), (1,), generator=generator))] for _ in range(2))
    if (h, w) == (size, size):
        return batch
    return F.interpolate(batch, size=(h, w), mode="bilinear", align_corners=False)


def _train_cycle(model: nn.Module, x: torch.Tensor, y: torch.Tensor, learning_rate: float,
                 generator: torch.Generator, augment: bool = False) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps_per_epoch = -(-len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate,
                                                   total_steps=EPOCHS_PER_CYCLE * steps_per_epoch)
    model.train()
    for _ in range(EPOCHS_PER_CYCLE):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            inputs = _rescale(x[batch], generator) if augment else x[batch]
            F.cross_entropy(model(inputs), y[batch]).backward()
            optimizer.step()
            schedule.step()
    model.eval()


def train(variant: str, seed: int = 0, target: float = TARGET_ACCURACY, size: int = SIZE,
          width: float = WIDTH, augment: bool = False) -> TrainedFixture:
    """A reduced-width ``variant`` trained on ``size`` x ``size`` digits until its validation
    accuracy reaches ``target``: one 24-epoch one-cycle schedule, then up to two more at a third
    of the learning rate each. ``augment``: the cycles after the first in multi-scale batches
    (_rescale), for a model that serves sizes up to twice its own."""
    pixels, labels = digit_images(seed, size)
    x = torch.from_numpy(preprocess(pixels[:UNSEEN_START]))
    y = torch.from_numpy(labels[:UNSEEN_START]).long()
    train_x, train_y = x[:TRAIN_COUNT], y[:TRAIN_COUNT]
    validation_x, validation_y = x[TRAIN_COUNT:], y[TRAIN_COUNT:]
    torch.manual_seed(seed)
    model = models.create_model(variant, num_classes=CLASSES, width=width)
    generator = torch.Generator().manual_seed(seed)
    reached = []
    for cycle in range(MAX_CYCLES):
        # multi-scale from the second cycle on: from scratch it does not converge at this rate
        _train_cycle(model, train_x, train_y, LEARNING_RATE / 3**cycle, generator, augment and cycle > 0)
        with torch.inference_mode():
            reached.append(accuracy(model(validation_x), validation_y))
        if reached[-1] >= target and (not augment or cycle > 0):
            return TrainedFixture(model, variant, reached[-1], (cycle + 1) * EPOCHS_PER_CYCLE)
    raise FixtureError(
        f"the digits fixture ({variant}, width {width}, {size}x{size}) reached validation accuracy "
        f"{', '.join(f'{a:.3f}' for a in reached)} after {MAX_CYCLES} cycles of "
        f"{EPOCHS_PER_CYCLE} epochs, below the target {target}; tests that compare int8/fp16 "
        f"accuracy against it would measure noise. Change the recipe in benchmarks/digits.py")


def write_shipped_fixture(path: Path = SHIPPED, variant: str = "se") -> Path:
    """Train the fixture and write it with a record beside it (.json: sha256, validation accuracy,
    epochs, the CPU and torch that trained it)."""
    import hashlib
    import json
    import platform

    from attnvgg_runtime.readers.cpu import cpu_identity

    fixture = train(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save_checkpoint(fixture.model, path, variant, CLASSES, WIDTH)
    record = {"variant": variant, "width": WIDTH, "classes": CLASSES,
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
              "validation_accuracy": fixture.validation_accuracy, "epochs": fixture.epochs,
              "trained_on": cpu_identity(), "torch": torch.__version__, "python": platform.python_version(),
              "command": ".venv/bin/python -m benchmarks.digits --write-fixture"}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def shipped_fixture(path: Path = SHIPPED) -> TrainedFixture:
    """The shipped fixture, its sha256 checked against its record."""
    import hashlib
    import json

    record = json.loads(path.with_suffix(".json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise FixtureError(f"{path}: sha256 {digest} differs from {path.with_suffix('.json')} "
                           f"({record['sha256']}); regenerate both with `{record['command']}`")
    model = models.create_model(record["variant"], num_classes=record["classes"], width=record["width"])
    models.load_weights(model, path)
    return TrainedFixture(model.eval(), record["variant"], record["validation_accuracy"], record["epochs"])


def write_unseen_npz(path: Path, seed: int = 0) -> Path:
    """The 600 images never trained or validated on, as uint8 images + labels (a CALIB_DIR
    .npz source)."""
    pixels, labels = digit_images(seed)
    np.savez(path, images=pixels[UNSEEN_START:], labels=labels[UNSEEN_START:])
    return path


def write_validation_npz(path: Path, seed: int = 0) -> Path:
    """The 197 validation digits (never trained on; they only decided when training stopped), as
    uint8 images + labels: a CALIB_DIR disjoint from the unseen 600 (an EVAL_DIR)."""
    pixels, labels = digit_images(seed)
    np.savez(path, images=pixels[TRAIN_COUNT:UNSEEN_START], labels=labels[TRAIN_COUNT:UNSEEN_START])
    return path


def main() -> None:
    """The inputs of a `make engine` run on the trained fixture (the shipped one for se, unless
    --train) with calibration and evaluation images apart (README, "Accuracy on your labelled
    images"):

        .venv/bin/python -m benchmarks.digits --out build/digits-inputs
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variant", default="se")
    parser.add_argument("--train", action="store_true",
                        help="train the checkpoint afresh on this CPU (default for se: the shipped fixture)")
    parser.add_argument("--write-fixture", action="store_true",
                        help="train the se fixture and write it to tests/assets/")
    args = parser.parse_args()
    if args.write_fixture:
        print(write_shipped_fixture())
        return
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    shipped = args.variant == "se" and not args.train
    fixture = shipped_fixture() if shipped else train(args.variant)
    checkpoint = models.save_checkpoint(fixture.model, args.out / f"{args.variant}.safetensors",
                                        args.variant, CLASSES, WIDTH)
    calib, evaluation = write_validation_npz(args.out / "calib.npz"), write_unseen_npz(args.out / "eval.npz")
    print(f"{checkpoint} (validation accuracy {fixture.validation_accuracy:.3f} after "
          f"{fixture.epochs} epochs), CALIB_DIR={calib} (197 digits), EVAL_DIR={evaluation} (600)")


if __name__ == "__main__":
    main()
