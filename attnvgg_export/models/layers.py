"""Layers of the attention-augmented VGG16 variants, written so that the exported graph is the math.

Each block maps (N, C, H, W) -> (N, C, H, W). Projections are 1x1 convolutions: a published
checkpoint's nn.Linear weights (out, in) load into them by a reshape (see attnvgg_export.models.weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AttentionMemoryError

DEFAULT_ATTENTION_BUDGET_BYTES = 4 * 1024**3


def _is_tracing() -> bool:
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


class SEBlock(nn.Module):
    """Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018).

    Bias-free excitation with reduction ``r``: 2 * C^2 / r parameters.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        # Named as the classic SEBlock's nn.Sequential(Linear, ReLU, Linear, Sigmoid) so that its
        # checkpoints load (2-D Linear weights are reshaped into these 1x1 convs).
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class TokenAttention(nn.Module):
    """Shared projections of the attention blocks: q, k: C -> C/r; v, out: C -> C; residual."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        key_dim = max(1, channels // reduction)
        self.linear_query = nn.Conv2d(channels, key_dim, 1)
        self.linear_key = nn.Conv2d(channels, key_dim, 1)
        self.linear_value = nn.Conv2d(channels, channels, 1)
        self.out_proj = nn.Conv2d(channels, channels, 1)

    def reset_parameters(self) -> None:
        # Kaiming for the attention projections, as the linear-attention article recommends.
        for conv in (self.linear_query, self.linear_key, self.linear_value, self.out_proj):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k as (N, HW, d) and v as (N, HW, C)."""
        q = self.linear_query(x).flatten(2).transpose(1, 2)
        k = self.linear_key(x).flatten(2).transpose(1, 2)
        v = self.linear_value(x).flatten(2).transpose(1, 2)
        return q, k, v

    def _project_out(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        attended = tokens.transpose(1, 2).reshape(x.shape)
        return x + self.out_proj(attended)


class LinearAttention(TokenAttention):
    """Linear attention (Katharopoulos et al., "Transformers are RNNs", ICML 2020).

    phi(x) = elu(x) + 1; out_i = phi(q_i) . (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j)).
    Time and memory are O(HW). Both token sums are taken over phi(k)/sqrt(HW) and v/sqrt(HW): the
    factor cancels between numerator and normaliser, the sums stay within fp16 at 200,704 tokens
    (448x448), and no scaled value falls into fp16's subnormal range.
    """

    def __init__(self, channels: int, reduction: int = 8, eps: float = 1e-6) -> None:
        super().__init__(channels, reduction)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._tokens(x)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        scale = k.shape[1] ** -0.5
        k = k * scale
        kv = torch.matmul(k.transpose(1, 2), v * scale)  # (N, d, C): mean of phi(k) v^T
        k_mean = k.sum(1, keepdim=True) * scale  # (N, 1, d)
        normaliser = (q * k_mean).sum(-1, keepdim=True) + self.eps  # (N, HW, 1)
        return self._project_out(torch.matmul(q, kv) / normaliser, x)


class SoftmaxAttention(TokenAttention):
    """Softmax self-attention as published: softmax(Q K^T / sqrt(d_k)) V, out_proj per token.

    The (HW x HW) attention map is O(HW^2) in memory; inputs whose map would exceed
    ``memory_budget_bytes`` are refused with the size and the memory needed.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        memory_budget_bytes: int = DEFAULT_ATTENTION_BUDGET_BYTES,
    ) -> None:
        super().__init__(channels, reduction)
        self.memory_budget_bytes = memory_budget_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_tracing():
            check_attention_budget(x.shape, x.element_size(), self.memory_budget_bytes)
        q, k, v = self._tokens(x)
        scores = torch.matmul(q, k.transpose(1, 2)) * (q.shape[-1] ** -0.5)
        return self._project_out(torch.matmul(scores.softmax(-1), v), x)


def attention_map_bytes(batch: int, height: int, width: int, element_size: int = 4) -> int:
    tokens = height * width
    return batch * tokens * tokens * element_size


def check_attention_budget(shape: torch.Size | tuple, element_size: int, budget: int) -> None:
    batch, channels, height, width = shape
    needed = attention_map_bytes(batch, height, width, element_size)
    if needed > budget:
        raise AttentionMemoryError(
            f"softmax attention over {height}x{width}={height * width} tokens at batch {batch} "
            f"needs a {needed / 2**30:.1f} GiB attention map, over the budget of "
            f"{budget / 2**30:.1f} GiB; use a smaller input, the 'la' variant (O(N) memory), "
            f"or raise attention_memory_budget"
        )


class ExportableAdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d with bins computed from the runtime shape, so ONNX stays correct.

    Bin i over a length-L axis spans [floor(i*L/S), ceil((i+1)*L/S)), as in PyTorch. The pooling is
    two small matrix products, P_h @ x @ P_w^T, with P built from the runtime H and W; ONNX has no
    adaptive pooling, and torch.onnx bakes the window of the example input otherwise.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else output_size

    @staticmethod
    def _bin_matrix(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
        # Python's // on int64 exports as integer Div. torch.div(rounding_mode="floor") exports as
        # a float Div and Floor, which an fp16 graph then computes in fp16, and OpenVINO turns
        # x / 7 into x * fp16(1/7): floor(21 * 0.14282) = 2, not 3, a bin off (docs/precision.md).
        index = torch.arange(bins, device=like.device)
        start = (index * length) // bins
        end = ((index + 1) * length + bins - 1) // bins
        position = torch.arange(length, device=like.device)
        inside = (position >= start[:, None]) & (position < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._bin_matrix(x.shape[-2], self.output_size[0], x)
        cols = self._bin_matrix(x.shape[-1], self.output_size[1], x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))
