import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from attnvgg_export import models
from attnvgg_export.models.layers import (
    ExportableAdaptiveAvgPool2d,
    LinearAttention,
    SEBlock,
    SoftmaxAttention,
)


def test_registry_lists_the_four_variants():
    assert models.list_variants() == ["la", "sa", "se", "vgg16"]


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(models.UnknownVariantError, match="'vgg19'.*la, sa, se, vgg16"):
        models.create_model("vgg19")


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_num_classes_below_one_is_refused(bad):
    with pytest.raises(models.ConfigError, match="num_classes"):
        models.create_model("se", num_classes=bad)


@pytest.mark.parametrize("size", [100, 16, 0, 33])
def test_image_size_must_be_a_multiple_of_32(size):
    with pytest.raises(models.ConfigError, match=f"{size}.*multiple of 32"):
        models.check_image_size(size)


def test_none_kwargs_do_not_override_model_defaults():
    model = models.create_model("se", num_classes=10, width=None, reduction=None)
    assert model.features[4].fc[0].out_channels == 64 // 16


@pytest.mark.parametrize(("variant", "extra"), [
    ("vgg16", 0), ("se", 76_288), ("la", 1_376_496), ("sa", 1_376_496)])
def test_full_size_parameter_counts(variant, extra):
    with torch.device("meta"):
        model = models.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == 138_357_544 + extra


@pytest.mark.parametrize("variant", ["vgg16", "se", "la", "sa"])
@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 64, 96), (3, 3, 96, 32)])
def test_every_variant_runs_at_batches_and_sizes(tiny, variant, shape):
    with torch.no_grad():
        logits = tiny(variant)(torch.randn(shape))
    assert logits.shape == (shape[0], 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (14, 14), (13, 21), (9, 5), (28, 17)])
def test_exportable_pool_equals_adaptive_avg_pool(hw):
    x = torch.randn(2, 4, *hw)
    expected = nn.AdaptiveAvgPool2d(7)(x)
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d(7)(x), expected, rtol=0, atol=1e-6)


def test_se_block_is_the_classic_linear_se():
    block = SEBlock(32, reduction=16)
    x = torch.randn(2, 32, 5, 6)
    w1 = block.fc[0].weight.flatten(1)
    w2 = block.fc[2].weight.flatten(1)
    gate = torch.sigmoid(F.linear(F.relu(F.linear(x.mean((2, 3)), w1)), w2))
    torch.testing.assert_close(block(x), x * gate[:, :, None, None])


def _tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The published form: nn.Linear applied per token of (N, HW, C)."""
    return F.linear(x.flatten(2).transpose(1, 2), conv.weight.flatten(1), conv.bias)


def test_softmax_attention_is_the_published_math():
    block = SoftmaxAttention(16, reduction=8).double()
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    q, k, v = (_tokens(c, x) for c in (block.linear_query, block.linear_key, block.linear_value))
    attn = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
    out = _tokens(block.out_proj, (attn @ v).transpose(1, 2).reshape(x.shape))
    expected = x + out.transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), expected)


def test_linear_attention_is_katharopoulos_with_elu_feature_map():
    block = LinearAttention(16, reduction=8).double()
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    q, k, v = (_tokens(c, x) for c in (block.linear_query, block.linear_key, block.linear_value))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    numerator = q @ (k.transpose(1, 2) @ v)
    denominator = q @ k.sum(1, keepdim=True).transpose(1, 2)
    attended = (numerator / denominator).transpose(1, 2).reshape(x.shape)
    expected = x + _tokens(block.out_proj, attended).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)  # eps=1e-6


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_intermediate(block: nn.Module, x: torch.Tensor) -> int:
    mode = _LargestTensor()
    with mode, torch.no_grad():
        block(x)
    return mode.largest


def test_linear_attention_memory_is_linear_in_tokens():
    block = LinearAttention(16, reduction=8)
    small = _largest_intermediate(block, torch.randn(1, 16, 32, 32))
    large = _largest_intermediate(block, torch.randn(1, 16, 64, 64))
    assert large == 4 * small  # 4x tokens -> 4x the largest tensor (it is O(N * C))
    assert small <= 16 * 32 * 32


def test_softmax_attention_memory_is_quadratic_in_tokens():
    block = SoftmaxAttention(16, reduction=8)
    tokens = 16 * 16
    assert _largest_intermediate(block, torch.randn(1, 16, 16, 16)) == tokens * tokens


@pytest.mark.numerics
def test_linear_attention_stays_finite_in_fp16_at_448():
    # Block 1 at 448x448: 200,704 tokens. Naive sums of phi(k) reach ~2e5 > fp16's 65,504.
    torch.manual_seed(0)
    block = LinearAttention(8, reduction=8)
    x = torch.randn(1, 8, 448, 448)
    k = F.elu(_tokens(block.linear_key, x)) + 1
    assert k.sum(1).max() > 65_504, "the test input must overflow a naive fp16 sum"
    with torch.no_grad():
        reference = block(x)
        half = block.half()(x.half()).float()
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half, reference, rtol=2e-2, atol=2e-2)


def test_softmax_attention_refuses_past_its_memory_budget(tiny):
    with pytest.raises(models.AttentionMemoryError, match=r"224x224=50176 tokens.*9\.4 GiB"):
        tiny("sa")(torch.randn(1, 3, 224, 224))
    small_budget = tiny("sa", attention_memory_budget=1024**2)
    with pytest.raises(models.AttentionMemoryError, match="64x64=4096 tokens"):
        small_budget(torch.randn(1, 3, 64, 64))


def test_initialization_follows_torchvision_and_kaiming_for_attention():
    torch.manual_seed(0)
    model = models.create_model("la", width=0.5)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    # torchvision: kaiming_normal_(fan_out, relu) -> std = sqrt(2 / (out * 9)), zero bias
    first = convs[1]
    expected_std = (2 / (first.out_channels * 9)) ** 0.5
    assert abs(first.weight.std().item() / expected_std - 1) < 0.05
    assert torch.count_nonzero(first.bias) == 0
    attention = model.features[4]
    value = attention.linear_value.weight
    assert abs(value.std().item() / (1 / value.shape[1]) ** 0.5 - 1) < 0.1  # kaiming, linear gain
    assert torch.count_nonzero(attention.linear_value.bias) == 0
    fc = model.classifier[0].weight
    assert abs(fc.std().item() / 0.01 - 1) < 0.05
