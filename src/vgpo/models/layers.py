"""Layers both tiny backbones (the U-Net in ``tiny.py``, the MM-DiT in ``dit.py``) share."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def timestep_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t = 1000*sigma (SD3's timestep convention), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = 1000.0 * sigma.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention, in float32 under bf16 autocast too: with 16-32 wide heads (the U-Net's;
    the DiT's were not measured) the fused CPU kernel's bf16 backward was half of a bf16 forward+backward and
    slower than its float32 one (docs/speed.md). The projections around it stay in bf16. Callers reach it as
    ``layers.attention`` so a benchmark can swap it (``benchmarks/network_speed.py``)."""
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)


def attend_mask(mask: torch.Tensor) -> torch.Tensor:
    """The prompt-token mask attention uses: the empty prompt (CFG's null condition) has no valid token, so
    it attends to its padding rather than produce NaNs."""
    return mask | (~mask.any(dim=1, keepdim=True))
