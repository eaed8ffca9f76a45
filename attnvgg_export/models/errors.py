"""The toolchain's error hierarchy. Library code raises these; only the CLI catches them. The
base classes are the box-side package's (attnvgg_runtime.errors): one hierarchy on both sides."""

from attnvgg_runtime.errors import ConfigError, ReaderUnavailable, ToolchainError

__all__ = ["AttentionMemoryError", "CheckpointError", "ConfigError", "ReaderUnavailable",
           "ToolchainError"]


class CheckpointError(ToolchainError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class AttentionMemoryError(ToolchainError, ValueError):
    """The O(N^2) attention map for an input would exceed the configured memory budget."""
