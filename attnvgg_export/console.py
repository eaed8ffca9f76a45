"""Keeping the console for the toolchain's own report."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(logger: str = "") -> Iterator[None]:
    """Silence stdout, warnings and INFO/WARNING logs of ``logger`` (root by default): torch.onnx
    and onnxruntime.quantization print progress and hints on every successful call."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
