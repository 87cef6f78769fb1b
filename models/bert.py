"""A BERT-layout sentence encoder built from torch.nn, written the way Hugging Face's BertModel is
(separate query / key / value projections, scores scaled by 1/sqrt(head width), an additive attention
mask, post-norm residual blocks, erf-GELU), so an export carries the attention pattern ONNX Runtime
fuses. Input: token ids (batch, tokens) and an attention mask (batch, tokens) of 1s and 0s."""

from __future__ import annotations

import math

import torch
from torch import nn


class BertLayer(nn.Module):
    """LayerNorm(x + Attention(x)), then LayerNorm(x + Linear(GELU(Linear(x))))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.width = heads, dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.intermediate = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.size(0), t.size(1), self.heads, self.width).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.width) + mask
        context = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size(0), context.size(1), self.heads * self.width)
        x = self.norm1(x + self.output(context))
        return self.norm2(x + self.down(nn.functional.gelu(self.intermediate(x))))


class BertEncoder(nn.Module):
    """Token + position embeddings, LayerNorm, `depth` BertLayers; returns the token states.
    Defaults: 6 layers 384 wide (12 heads, 1536 hidden), a MiniLM-sized sentence encoder."""

    def __init__(
        self,
        vocab: int = 30522,
        depth: int = 6,
        dim: int = 384,
        heads: int = 12,
        hidden: int = 1536,
        max_tokens: int = 512,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_tokens, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, hidden) for _ in range(depth))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.size(1), device=ids.device).unsqueeze(0)
        x = self.norm(self.tokens(ids) + self.positions(positions))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x
