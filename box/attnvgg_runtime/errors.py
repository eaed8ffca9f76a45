"""The errors a box-side command reports to its user: each message says what is wrong and how to
fix it. The toolchain's own errors (attnvgg_export.models.errors) derive from these."""


class ToolchainError(Exception):
    """Base: a problem the user can fix; the message says what and how."""


class ConfigError(ToolchainError, ValueError):
    """A setting or argument is out of range."""


class ReaderUnavailable(ToolchainError):
    """This machine cannot run an artifact under a reader (no GPU for a TensorRT plan, no bf16 or
    VNNI for OpenVINO): reported as not verified here instead of failed."""
