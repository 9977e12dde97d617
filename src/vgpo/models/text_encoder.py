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


class ContextHead(nn.Module):
    """Pretraining's auxiliary head: from each token's feature, the words at offsets -window..-1 and
    1..window around it (ELMo/skip-gram-style context prediction, one classifier per offset; padding,
    id 0, where the offset falls outside the prompt).

    Why: trained by the flow loss alone, the encoder's noun tokens stay close to a bag of the sentence's
    words. A linear probe on the shipped web base reads a noun token's own colour at 0.30 and the other
    object's at 0.31 (docs/learning-study.md, section 18), so cross-attention cannot fetch "the colour of
    the circle". Predicting its neighbours by offset makes each token carry its own context: "circle" in
    "a red circle" must say "red" at -1. Text only: the head sees no image and no prompt metadata. It is
    not part of the model (RL and sampling never run it); ``vgpo pretrain`` keeps it in ``resume.pt``.
    """

    def __init__(self, text_dim: int, vocab_size: int, window: int, generator: torch.Generator | None = None):
        super().__init__()
        if window < 1:
            raise VgpoError(f"text_context_window: expected >= 1, got {window}")
        self.window, self.vocab_size = window, vocab_size
        self.proj = nn.Linear(text_dim, 2 * window * vocab_size)
        with torch.no_grad():  # its own generator: adding the head leaves the model's initialisation as it was
            bound = 1.0 / math.sqrt(text_dim)
            self.proj.weight.copy_(torch.empty_like(self.proj.weight).uniform_(-bound, bound, generator=generator))
            self.proj.bias.zero_()

    def offsets(self) -> list[int]:
        return [o for o in range(-self.window, self.window + 1) if o]

    def targets(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L, 2*window) the word id at each offset of each position; 0 (padding) outside the prompt."""
        length = ids.shape[1]
        cols = []
        for o in self.offsets():
            shifted = torch.zeros_like(ids)
            if o < 0:
                shifted[:, -o:] = ids[:, : length + o]
            else:
                shifted[:, : length - o] = ids[:, o:]
            cols.append(shifted)
        return torch.stack(cols, dim=-1)

    def loss(self, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the prompts' real tokens (padding positions and empty prompts add
        nothing; 0 when the batch has no real token). Float32."""
        if not bool(mask.any()):
            return tokens.float().sum() * 0.0
        b, length, _ = tokens.shape
        logits = self.proj(tokens.float()).view(b, length, 2 * self.window, self.vocab_size)
        return nn.functional.cross_entropy(logits[mask].flatten(0, 1), self.targets(ids)[mask].flatten())
