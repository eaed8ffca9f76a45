"""A small trained fixture: a reduced-width variant trained on scikit-learn's handwritten digits.

Random-init VGG logits are nearly flat, so top-1 agreement on them says little. These models
are trained in seconds on the CPU on a real image task, so that int8/fp16 accuracy gaps mean
something. The digits (8x8, 16 grey levels) are upsampled to 32x32 uint8 images and go through
the toolchain's own preprocessing, the one the manifest records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import models
from calibration.data import image_transform, to_rgb
from calibration.preprocessing import Preprocessing

SIZE = 32
WIDTH = 0.125
TRAIN_COUNT = 1197  # the other 600 images: calibration and held-out, never trained on


def digit_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, 32, 32) uint8 images and their labels, in a seeded order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] / 16.0
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    pixels = (images[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    order = np.random.default_rng(seed).permutation(len(pixels))
    return pixels[order], digits.target[order]


def preprocess(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    transform = image_transform(Preprocessing.for_size(SIZE, SIZE))
    return np.stack([transform(to_rgb(Image.fromarray(p))).numpy() for p in pixels])


def train(variant: str, epochs: int = 12, seed: int = 0) -> torch.nn.Module:
    """A trained reduced-width ``variant`` (eval mode); ~95-96% held-out accuracy (se, vgg16)."""
    pixels, labels = digit_images(seed)
    x = torch.from_numpy(preprocess(pixels[:TRAIN_COUNT]))
    y = torch.from_numpy(labels[:TRAIN_COUNT]).long()
    torch.manual_seed(seed)
    model = models.create_model(variant, num_classes=10, width=WIDTH).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps_per_epoch = -(-len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3,
                                                   total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def write_heldout_npz(path: Path, seed: int = 0) -> Path:
    """The 600 images never trained on, as uint8 images + labels (a CALIB_DIR .npz source)."""
    pixels, labels = digit_images(seed)
    np.savez(path, images=pixels[TRAIN_COUNT:], labels=labels[TRAIN_COUNT:])
    return path


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))
