"""The one preprocessing definition: recorded in the manifest, used for calibration, parity and
by runtimes, so that calibration cannot silently differ from inference."""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, center-crop ``crop`` (H, W), scale to [0, 1],
    normalize with mean/std per channel, RGB order, NCHW float32."""

    resize: int = 256
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    interpolation: str = "bilinear"

    @classmethod
    def for_size(cls, height: int, width: int) -> Preprocessing:
        """torchvision's ImageNet evaluation recipe: resize to crop / 0.875, then center-crop."""
        return cls(resize=round(min(height, width) / 0.875), crop=(height, width))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Preprocessing:
        """From a manifest's `preprocessing` (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
