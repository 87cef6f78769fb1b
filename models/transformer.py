"""A small transformer-style encoder block: pre-norm attention and a GELU MLP, residuals around both.

Exported, it carries the forms `optkit fuse` canonicalizes: LayerNorm (decomposed below opset 17) and
GELU (decomposed below opset 20), next to MatMul-heavy attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import make_activation, make_norm


class EncoderBlock(nn.Module):
    """x + Attention(LayerNorm(x)), then x + MLP(LayerNorm(x)) with MLP = Linear, GELU, Linear
    (`activation` and `norm` choose others; only layer norm and none apply to tokens).

    Attention is written with MatMul and Softmax (no fused kernel), `heads` heads of width
    `dim // heads`. Input and output: (batch, tokens, dim).
    """

    def __init__(
        self,
        dim: int = 32,
        heads: int = 4,
        hidden: int = 64,
        approximate: str = "none",
        activation: str = "gelu",
        norm: str = "layer",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.norm1 = make_norm(norm, dim, "tokens")
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = make_norm(norm, dim, "tokens")
        act = (
            nn.GELU(approximate=approximate)
            if activation == "gelu"
            else make_activation(activation, hidden, "tokens")
        )
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), act, nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        width = dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.heads, width).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(width)
        attended = (scores.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Sequential):
    """`depth` EncoderBlocks of width `dim`, the same choices for each."""

    def __init__(self, depth: int = 2, dim: int = 32, heads: int = 4, hidden: int = 64, **choices):
        super().__init__(*(EncoderBlock(dim, heads, hidden, **choices) for _ in range(depth)))
