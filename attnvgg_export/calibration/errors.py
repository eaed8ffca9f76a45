from attnvgg_export.models import ToolchainError


class CalibrationDataError(ToolchainError):
    """Calibration or held-out data is missing, undecodable, too small or the wrong shape."""


class CalibrationRangeError(ToolchainError):
    """Calibration produced ranges that cannot be quantized (NaN or Inf)."""
