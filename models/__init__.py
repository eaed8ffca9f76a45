"""Attention-augmented VGG16 variants: registry, layers and safe weight loading."""

from .errors import AttentionMemoryError, CheckpointError, ConfigError, ToolchainError
from .registry import (
    UnknownVariantError,
    check_image_size,
    check_variant,
    create_model,
    describe_variant,
    list_variants,
)
from .weights import LoadReport, load_weights, read_checkpoint, save_checkpoint

__all__ = [
    "AttentionMemoryError",
    "CheckpointError",
    "ConfigError",
    "LoadReport",
    "ToolchainError",
    "UnknownVariantError",
    "check_image_size",
    "check_variant",
    "create_model",
    "describe_variant",
    "list_variants",
    "load_weights",
    "read_checkpoint",
    "save_checkpoint",
]
