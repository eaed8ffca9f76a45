"""Variant registry: list_variants(), create_model(name, ...), as torchvision's get_model."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import vgg
from .errors import ConfigError
from .names import VARIANT_NAMES

_VARIANTS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


class UnknownVariantError(ConfigError):
    pass


def register_variant(name: str, builder: Callable[..., nn.Module], description: str) -> None:
    if name in _VARIANTS:
        raise ValueError(f"variant {name!r} is already registered")
    _VARIANTS[name] = builder
    _DESCRIPTIONS[name] = description


def list_variants() -> list[str]:
    return sorted(_VARIANTS)


def describe_variant(name: str) -> str:
    return _DESCRIPTIONS[check_variant(name)]


def check_variant(name: str) -> str:
    if name not in _VARIANTS:
        raise UnknownVariantError(
            f"unknown variant {name!r}; known variants: {', '.join(list_variants())}"
        )
    return name


def check_image_size(height: int, width: int | None = None) -> tuple[int, int]:
    """Every variant serves H, W that are multiples of 32 and >= 32 (five 2x2 pools)."""
    width = height if width is None else width
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 32 or value % 32:
            raise ConfigError(
                f"image {name} {value!r} is not supported: use a multiple of 32 that is >= 32 "
                f"(e.g. {max(32, round(value / 32) * 32) if isinstance(value, int) else 224})"
            )
    return height, width


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build variant ``name`` in eval mode. ``None`` kwargs are dropped so that CLI defaults
    never override the model's own (timm's rule)."""
    builder = _VARIANTS[check_variant(name)]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    width = kwargs.get("width", 1.0)
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width!r}")
    if kwargs.get("reduction", 1) < 1:
        raise ConfigError(f"reduction must be >= 1, got {kwargs['reduction']!r}")
    model = builder(num_classes=num_classes, **kwargs).eval()
    model.variant = name
    return model


register_variant("vgg16", vgg.vgg16, "torchvision's VGG16 (13 conv, 5 max-pools, 3 FC)")
register_variant("se", vgg.vgg16_se, "VGG16 + Squeeze-and-Excitation after each stage")
register_variant("la", vgg.vgg16_la, "VGG16 + linear attention (O(HW)) after each stage")
register_variant("sa", vgg.vgg16_sa, "VGG16 + softmax attention (O(HW^2)) after each stage")

if tuple(list_variants()) != VARIANT_NAMES:  # the torch-free list must follow the registry
    raise RuntimeError(f"attnvgg_export.models.names.VARIANT_NAMES {VARIANT_NAMES} != registered "
                       f"{list_variants()}")
