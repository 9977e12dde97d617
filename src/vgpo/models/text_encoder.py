"""Text encoders of the tiny model, selected by ``TinyConfig.text_encoder``.

Both map token ids and a validity mask to a condition ``{"tokens", "mask", "pooled"}``: ``tokens``
feed the U-Net's cross-attention, ``pooled`` its FiLM vector.

- ``mean`` (the shipped checkpoints' encoder): learned position embeddings initialised at 0.02 against
  word embeddings at N(0, 1), so after the first LayerNorm a token is close to its word alone, and
  ``pooled`` is the masked mean of the token features, which discards order. Close to a bag of words:
  "a red circle and a blue square" and "a blue circle and a red square" encode alike
  (``tests/test_text_binding.py``).
- ``ordered``: sinusoidal positions on the word embeddings' scale (each token's position vector has the
  norm of a typical word embedding), the same Transformer, and ``pooled`` read by a learned query
  attending over the token features (attention pooling), so both channels carry word order.
  Cross-attention keys keep the positions the Transformer mixed into each token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from vgpo.errors import VgpoError
from vgpo.models.layers import attend_mask
from vgpo.models.protocol import Condition

if TYPE_CHECKING:
    from vgpo.models.tiny import TinyConfig

#: Values of ``TinyConfig.text_encoder``.
TEXT_ENCODERS = ("mean", "ordered")


def _transformer(cfg: TinyConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.text_dim, cfg.heads, 2 * cfg.text_dim, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)


class TextEncoder(nn.Module):
    """``mean``: learned positions at 0.02, masked-mean pooling."""

    def __init__(self, vocab_size: int, cfg: TinyConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.text_dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.text_dim) * 0.02)
        self.layers = _transformer(cfg)
        self.norm = nn.LayerNorm(cfg.text_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Condition:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        h = self.norm(self.layers(h, src_key_padding_mask=~attend_mask(mask)))
        w = mask.float().unsqueeze(-1)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)
        return {"tokens": h, "mask": mask, "pooled": pooled}


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sin/cos position codes scaled to norm sqrt(dim) per position, the expected norm of
    an N(0, 1) word embedding of width ``dim``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]
    codes = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # each row has norm sqrt(half)
    if dim % 2:
        codes = torch.cat([codes, torch.zeros(length, 1)], dim=-1)
    return codes * math.sqrt(2.0)


class OrderedTextEncoder(nn.Module):
    """``ordered``: sinusoidal positions at the words' scale, attention pooling by a learned query."""

    def __init__(self, vocab_size: int, cfg: TinyConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.text_dim)  # N(0, 1): row norms about sqrt(text_dim)
        self.register_buffer("pos", sinusoidal_positions(cfg.max_tokens, cfg.text_dim), persistent=False)
        self.layers = _transformer(cfg)
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.query = nn.Parameter(torch.randn(1, 1, cfg.text_dim))
        self.pool = nn.MultiheadAttention(cfg.text_dim, cfg.heads, batch_first=True)
        self.pool_norm = nn.LayerNorm(cfg.text_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> Condition:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        attend = attend_mask(mask)
        h = self.norm(self.layers(h, src_key_padding_mask=~attend))
        query = self.query.expand(ids.shape[0], -1, -1)
        pooled, _ = self.pool(query, h, h, key_padding_mask=~attend, need_weights=False)
        return {"tokens": h, "mask": mask, "pooled": self.pool_norm(pooled[:, 0])}


def build_text_encoder(vocab_size: int, cfg: TinyConfig) -> nn.Module:
    if cfg.text_encoder == "mean":
        return TextEncoder(vocab_size, cfg)
    if cfg.text_encoder == "ordered":
        return OrderedTextEncoder(vocab_size, cfg)
    raise VgpoError(
        f"text_encoder: unknown text encoder '{cfg.text_encoder}'; expected one of: {', '.join(TEXT_ENCODERS)}"
    )
