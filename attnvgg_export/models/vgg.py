"""One VGG16 layout; the variants differ only by the block placed after each stage's last conv."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .layers import (
    DEFAULT_ATTENTION_BUDGET_BYTES,
    ExportableAdaptiveAvgPool2d,
    LinearAttention,
    SEBlock,
    SoftmaxAttention,
    TokenAttention,
)

# torchvision's cfg "D": channel counts, "M" for a 2x2 max-pool (which ends a stage).
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]  # fmt: skip

StageBlock = Callable[[int], nn.Module]


def scaled_cfg(width: float) -> list[int | str]:
    return [v if v == "M" else max(8, round(v * width)) for v in VGG16_CFG]


def make_layers(cfg: list[int | str], stage_block: StageBlock | None = None) -> nn.Sequential:
    """torchvision's make_layers, plus ``stage_block(channels)`` inserted before every pool."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            if stage_block is not None:
                layers.append(stage_block(in_channels))
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG module layout (features, avgpool, classifier), with an export-safe pool."""

    def __init__(self, features: nn.Sequential, last_channels: int, hidden: int,
                 num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = ExportableAdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)
        for block in self.modules():
            if isinstance(block, TokenAttention):
                block.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg(stage_block: StageBlock | None, num_classes: int, width: float) -> VGG:
    cfg = scaled_cfg(width)
    features = make_layers(cfg, stage_block)
    return VGG(features, int(cfg[-2]), max(16, round(4096 * width)), num_classes)


def vgg16(num_classes: int = 1000, width: float = 1.0) -> VGG:
    return _vgg(None, num_classes, width)


def vgg16_se(num_classes: int = 1000, width: float = 1.0, reduction: int = 16) -> VGG:
    return _vgg(lambda c: SEBlock(c, reduction), num_classes, width)


def vgg16_la(num_classes: int = 1000, width: float = 1.0, reduction: int = 8) -> VGG:
    return _vgg(lambda c: LinearAttention(c, reduction), num_classes, width)


def vgg16_sa(num_classes: int = 1000, width: float = 1.0, reduction: int = 8,
             attention_memory_budget: int = DEFAULT_ATTENTION_BUDGET_BYTES) -> VGG:
    return _vgg(lambda c: SoftmaxAttention(c, reduction, attention_memory_budget),
                num_classes, width)
