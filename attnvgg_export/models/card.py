"""Model card: what a variant costs (parameters, MACs, activation memory) and how that compares
with the figures the seed implementations published."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import DEFAULT_ATTENTION_BUDGET_BYTES, SEBlock, TokenAttention, attention_map_bytes
from .registry import check_image_size, create_model

VGG16_PARAMETERS = 138_357_544
PUBLISHED = {
    "se": {"extra_parameters": 76_288},
    "la": {"parameters": 139.2e6, "gflops_224": 16.1},
}


@dataclass(frozen=True)
class BlockCost:
    name: str
    kind: str
    channels: int
    parameters: int
    macs: int


@dataclass(frozen=True)
class ModelCard:
    variant: str
    img_size: int
    num_classes: int
    width: float
    parameters: int
    extra_parameters: int  # over plain VGG16 at the same width and classes
    macs: dict[str, int]  # conv, attention, classifier, total
    peak_activation_bytes: int
    blocks: list[BlockCost]
    verdicts: list[str]

    def to_json(self) -> dict:
        return asdict(self)


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trace_on_meta(model: nn.Module, img_size: int) -> tuple[dict[str, int], int]:
    """Per-module MACs (from FlopCounterMode, 2 FLOPs per MAC) and a peak activation estimate:
    the largest input + output of any layer, plus the largest O(N^2) attention map."""
    peak = 0

    def hook(module, inputs, output):
        nonlocal peak
        in_bytes = sum(t.numel() * t.element_size() for t in inputs if torch.is_tensor(t))
        extra = 0
        if isinstance(module, TokenAttention) and module.__class__.__name__ == "SoftmaxAttention":
            _, _, h, w = inputs[0].shape
            extra = attention_map_bytes(inputs[0].shape[0], h, w, inputs[0].element_size())
        peak = max(peak, in_bytes + output.numel() * output.element_size() + extra)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children()) or isinstance(m, (SEBlock, TokenAttention))]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, img_size, img_size, device="meta"))
    for handle in handles:
        handle.remove()
    root = type(model).__name__ + "."
    flops = {name.removeprefix(root): sum(ops.values()) // 2
             for name, ops in counter.get_flop_counts().items()}
    return flops, peak


def model_card(variant: str, img_size: int = 224, num_classes: int = 1000,
               width: float = 1.0) -> ModelCard:
    check_image_size(img_size)
    with torch.device("meta"):
        kwargs = {"attention_memory_budget": float("inf")} if variant == "sa" else {}
        model = create_model(variant, num_classes=num_classes, width=width, **kwargs)
        plain = create_model("vgg16", num_classes=num_classes, width=width)
    flops, peak = _trace_on_meta(model, img_size)
    blocks = [BlockCost(f"features.{name}", type(m).__name__, m.fc[0].in_channels
                        if isinstance(m, SEBlock) else m.out_proj.in_channels,
                        _param_count(m), flops.get(f"features.{name}", 0))
              for name, m in model.features.named_children()
              if isinstance(m, (SEBlock, TokenAttention))]
    total, classifier = flops["Global"], flops.get("classifier", 0)
    attention = sum(b.macs for b in blocks)
    macs = {"conv": total - classifier - attention, "attention": attention,
            "classifier": classifier, "total": total}
    parameters = _param_count(model)
    card = ModelCard(variant, img_size, num_classes, width, parameters,
                     parameters - _param_count(plain), macs, peak, blocks, [])
    return ModelCard(**{**asdict(card), "blocks": blocks, "verdicts": _verdicts(card)})


def _verdicts(card: ModelCard) -> list[str]:
    full_size = card.width == 1.0 and card.num_classes == 1000
    verdicts = []
    if card.variant == "se":
        extra = PUBLISHED["se"]["extra_parameters"]
        verdicts.append(
            f"published +{extra:,} parameters: measured +{card.extra_parameters:,}: "
            + ("matches" if card.extra_parameters == extra else
               "differs (expected at width/classes other than the seed's)" if not full_size
               else "DIFFERS"))
        for b in card.blocks:
            expected = 2 * b.channels * (b.channels // 16)
            verdicts.append(f"{b.name}: published 2*C^2/r = {expected:,} at C={b.channels}, r=16: "
                            f"measured {b.parameters:,}: "
                            + ("matches" if b.parameters == expected else "differs"))
    if card.variant == "la" and full_size:
        published = PUBLISHED["la"]
        verdicts.append(
            f"published {published['parameters'] / 1e6:.1f} M parameters: measured "
            f"{card.parameters / 1e6:.2f} M: "
            + ("matches" if abs(card.parameters - published["parameters"]) < 0.05e6
               else f"differs by {(card.parameters - published['parameters']) / 1e6:+.2f} M; "
                    f"attention after all five stages adds 2.25*C^2 + 2.25*C per stage"))
        if card.img_size == 224:
            gmacs = card.macs["total"] / 1e9
            verdicts.append(
                f"published {published['gflops_224']} GFLOPs at 224: measured {gmacs:.2f} GMACs "
                f"= {2 * gmacs:.2f} GFLOPs: "
                + ("matches as MACs" if abs(gmacs - published["gflops_224"]) < 0.05 else
                   "differs (plain VGG16 alone is 15.47 GMACs; the blocks add "
                   f"{card.macs['attention'] / 1e9:.2f} GMACs)"))
    if card.variant == "sa":
        largest = attention_map_bytes(1, card.img_size, card.img_size)
        budget = DEFAULT_ATTENTION_BUDGET_BYTES
        verdicts.append(
            f"attention map of the first stage at batch 1: {largest / 2**30:.2f} GiB; the default "
            f"budget of {budget / 2**30:.0f} GiB " + ("allows it" if largest <= budget else "refuses it"))
    return verdicts


def card_markdown(card: ModelCard) -> str:
    m = card.macs
    lines = [
        f"### `{card.variant}` at {card.img_size}x{card.img_size}"
        f" ({card.num_classes} classes, width {card.width:g})",
        "",
        "| figure | value |",
        "|---|---|",
        f"| parameters | {card.parameters:,} |",
        f"| over plain VGG16 | {card.extra_parameters:+,} |",
        f"| MACs conv | {m['conv'] / 1e9:.3f} G |",
        f"| MACs attention/SE blocks | {m['attention'] / 1e9:.3f} G |",
        f"| MACs classifier | {m['classifier'] / 1e9:.3f} G |",
        f"| MACs total | {m['total'] / 1e9:.3f} G |",
        f"| peak activation estimate (batch 1, fp32) | {card.peak_activation_bytes / 2**20:.1f} MiB |",
    ]
    if card.blocks:
        lines += ["", "| block | kind | C | parameters | MACs |", "|---|---|---|---|---|"]
        lines += [f"| {b.name} | {b.kind} | {b.channels} | {b.parameters:,} | {b.macs / 1e6:.1f} M |"
                  for b in card.blocks]
    if card.verdicts:
        lines += ["", "Verdicts:", ""]
        lines += [f"- {v}" for v in card.verdicts]
    return "\n".join(lines) + "\n"
