"""Attention-augmented VGG16 variants: registry, layers and safe weight loading.

The error types and the variant names import without torch; everything else loads on first use
(PEP 562), so that stages that need no model (engines, the CLI's parser) start fast.
"""

import importlib

from .errors import (
    AttentionMemoryError,
    CheckpointError,
    ConfigError,
    ReaderUnavailable,
    ToolchainError,
)
from .names import VARIANT_NAMES

_LAZY = {
    "UnknownVariantError": "registry", "check_image_size": "registry", "check_variant": "registry",
    "create_model": "registry", "describe_variant": "registry", "list_variants": "registry",
    "LoadReport": "weights", "load_weights": "weights", "read_checkpoint": "weights",
    "save_checkpoint": "weights",
}

__all__ = ["AttentionMemoryError", "CheckpointError", "ConfigError", "ReaderUnavailable",
           "ToolchainError",
           "VARIANT_NAMES", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
