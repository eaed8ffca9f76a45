"""The toolchain's error hierarchy. Library code raises these; only the CLI catches them."""


class ToolchainError(Exception):
    """Base: a problem the user can fix; the message says what and how."""


class ConfigError(ToolchainError, ValueError):
    """A setting or argument is out of range."""


class ReaderUnavailable(ToolchainError):
    """This machine cannot run an artifact under a reader (no GPU for a TensorRT plan, no bf16 or
    VNNI for OpenVINO): the gate reports it as not verified instead of failing it."""


class CheckpointError(ToolchainError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class AttentionMemoryError(ToolchainError, ValueError):
    """The O(N^2) attention map for an input would exceed the configured memory budget."""
