"""The reference reader: eager PyTorch fp32, as a CPU deployment runs it. The only reader that
imports torch, and the only way the toolchain builds the eager model (export, gate, explain and
bench all use ``eager_model``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnvgg_export import models
from attnvgg_runtime.files import sha256_file
from attnvgg_runtime.manifest import Manifest, ManifestError
from attnvgg_runtime.readers import Runner


def eager_runner(model: nn.Module, bf16: bool = False, compiled: bool = False) -> Runner:
    """Eager PyTorch as a CPU deployment runs it: inference mode, channels-last (NHWC), the
    layout oneDNN's convolutions are fastest in (VGG16-SE: 1.26x at 224 batch 8, 1.61x at 448
    batch 2; python -m benchmarks.eager_settings); outputs equal NCHW's to float rounding
    (tests/graphs/test_export.py). The model's 4-D weights are converted in place, once.
    ``bf16``: under CPU autocast to bf16; ``compiled``: through torch.compile (bench rows)."""
    model.to(memory_format=torch.channels_last)
    module = torch.compile(model) if compiled else model

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(x).float().numpy()
    return run


def run_torch(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    """The reference outputs of ``model`` on ``batch`` (eager_runner's fp32)."""
    return eager_runner(model)(batch)


def bf16_matmul(n: int) -> Callable[[], object]:
    """An n x n bf16 matmul in torch (oneDNN: AMX or AVX512-BF16), for the machine's bf16 peak."""
    a, b = (torch.randn(n, n).to(torch.bfloat16) for _ in range(2))
    return lambda: torch.matmul(a, b)


def eager_model(variant: str, num_classes: int, model_width: float = 1.0, seed: int = 0,
                checkpoint: str | Path | None = None, reset_head: bool = False,
                attention_memory_budget: int | None = None) -> tuple[nn.Module, str]:
    """The eval-mode model and a line saying where its weights came from: seeded default
    initialization, or a checkpoint loaded without executing pickled code (attnvgg_export.models.weights)."""
    kwargs: dict = {"width": model_width}
    if variant == "sa" and attention_memory_budget is not None:
        kwargs["attention_memory_budget"] = attention_memory_budget
    torch.manual_seed(seed)
    model = models.create_model(variant, num_classes, **kwargs)
    if checkpoint is None:
        return model, f"seeded default initialization (torch.manual_seed({seed})), no checkpoint"
    report = models.load_weights(model, Path(checkpoint), reset_head=reset_head)
    return model, report.summary()


def model_from_manifest(manifest: Manifest) -> nn.Module:
    """The eager model a manifest's artifacts were exported from, refused where its checkpoint
    changed since the build."""
    spec = dict(manifest.model)
    checkpoint = spec.pop("checkpoint")
    recorded = spec.pop("checkpoint_sha256", None)
    if checkpoint and recorded and Path(checkpoint).is_file() and sha256_file(checkpoint) != recorded:
        raise ManifestError(f"checkpoint {checkpoint} changed since the build (its sha256 is not the "
                            f"one the manifest records): the artifacts were made from other "
                            f"weights; rebuild with `make engine CHECKPOINT={checkpoint}`")
    return eager_model(checkpoint=checkpoint or None, **spec)[0]


def module_outputs(model: nn.Module, modules: list[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of the named submodules of ``model`` on ``batch`` (forward hooks)."""
    captured: dict[str, np.ndarray] = {}
    by_name = dict(model.named_modules())
    # copies: the ReLUs after convs and linears work in place on what the hook saw
    hooks = [by_name[name].register_forward_hook(
        lambda _mod, _inp, out, key=name: captured.__setitem__(key, out.detach().numpy().copy()))
        for name in modules]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(batch)))
    finally:
        for hook in hooks:
            hook.remove()
    return captured
