"""The tiny model's second backbone: a small MM-DiT (SD3's joint-attention transformer) on latents.

Why: the U-Net reads the prompt by cross-attention at its two coarse resolutions only (4x4 and 2x2 on an
8x8 latent), and no U-Net we pretrained binds attributes to objects (docs/learning-study.md, sections 9
and 14). SD3's MM-DiT lets latent positions and prompt tokens attend to each other in every block (the
last one: latent positions to both), at the latent's full resolution, with separate weights for the two
streams. On an 8x8x4 latent with 1x1 patches that is 64 image tokens, cheap enough for the CPU.

What follows SD3 (Esser et al. 2024, sections 4-5): per-stream adaLN-Zero modulation (shift, scale, gate
for attention and MLP) from time + pooled-prompt embedding; joint attention over [prompt; image] tokens;
RMS-normalised queries and keys (SD3.5's QK-norm); fixed 2-D sin-cos positions; the last block updates
only the image stream (the prompt stream's output would be unused, so there it gives keys and values
only); a final adaLN, then a zero-initialised projection, so the network starts at v = 0 and every block
as the identity. What is ours: the tiny text encoder's tokens as the prompt stream and its pooled vector in
the modulation when ``film_text`` (SD3's pooled CLIP); padded prompt tokens masked out of the keys, except
for the empty prompt (CFG's null condition), which attends to its padding as the U-Net's cross-attention
does (``layers.attend_mask``), so both backbones read the null condition alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vgpo.models import layers
from vgpo.models.protocol import Condition
from vgpo.models.text_encoder import build_text_encoder, sinusoidal_positions

if TYPE_CHECKING:
    from vgpo.models.tiny import TinyConfig

#: LoRA targets on the DiT: every linear map of both streams (attention, MLP, modulation).
DIT_LORA_TARGETS: tuple[str, ...] = ("qkv", "kv", "out", "mlp_in", "mlp_out", "ada")


def grid_positions(height: int, width: int, dim: int) -> torch.Tensor:
    """(height*width, dim) fixed 2-D positions: half the channels code the row, half the column. Each half
    has the norm of a word embedding of its width (``sinusoidal_positions``); the 1/sqrt(2) gives the whole
    code norm sqrt(dim / 2), that of one half's, so a position weighs the same whatever the grid's aspect."""
    rows = sinusoidal_positions(height, dim // 2)[:, None].expand(height, width, dim // 2)
    cols = sinusoidal_positions(width, dim // 2)[None].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim) / 2.0**0.5


class _Stream(nn.Module):
    """One stream's weights in a joint block (image or prompt): modulation, QKV, output, MLP."""

    def __init__(self, width: int, heads: int, emb_dim: int, update: bool = True):
        super().__init__()
        self.heads, self.update = heads, update
        # shift/scale for attention, plus gate and the MLP's shift/scale/gate when this stream is updated
        self.ada = nn.Linear(emb_dim, (6 if update else 2) * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.k_norm = nn.RMSNorm(width // heads, eps=1e-6)
        if not update:  # keys and values only: nothing reads this stream's queries
            self.kv = nn.Linear(width, 2 * width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
            self.q_norm = nn.RMSNorm(width // heads, eps=1e-6)
            self.out = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.mlp_in = nn.Linear(width, 4 * width)
            self.mlp_out = nn.Linear(4 * width, width)

    def qkv_heads(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
        """(queries or None when this stream is not updated, keys, values), each (B, heads, N, width/heads)."""
        b, n, c = x.shape
        h = self.norm1(x) * (1 + mod[1][:, None]) + mod[0][:, None]
        parts = self.qkv(h).chunk(3, dim=-1) if self.update else (None, *self.kv(h).chunk(2, dim=-1))
        q, k, v = (t if t is None else t.view(b, n, self.heads, c // self.heads).transpose(1, 2) for t in parts)
        return (None if q is None else self.q_norm(q)), self.k_norm(k), v

    def finish(self, x: torch.Tensor, attended: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The gated residual updates: this stream's attention output, then its MLP."""
        b, _, n, _ = attended.shape
        x = x + mod[2][:, None] * self.out(attended.transpose(1, 2).reshape(b, n, -1))
        h = self.norm2(x) * (1 + mod[4][:, None]) + mod[3][:, None]
        return x + mod[5][:, None] * self.mlp_out(F.gelu(self.mlp_in(h), approximate="tanh"))


class JointBlock(nn.Module):
    """SD3's MM-DiT block: both streams modulated, attended jointly, each updated by its own weights."""

    def __init__(self, width: int, heads: int, emb_dim: int, update_prompt: bool = True):
        super().__init__()
        self.image = _Stream(width, heads, emb_dim)
        self.prompt = _Stream(width, heads, emb_dim, update=update_prompt)

    def forward(
        self, img: torch.Tensor, txt: torch.Tensor, emb: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        e = F.silu(emb)
        mod_i = self.image.ada(e).chunk(6, dim=-1)
        mod_t = self.prompt.ada(e).chunk(6 if self.prompt.update else 2, dim=-1)
        qi, ki, vi = self.image.qkv_heads(img, mod_i)
        qt, kt, vt = self.prompt.qkv_heads(txt, mod_t)
        n_txt = txt.shape[1] if self.prompt.update else 0  # the last block asks with image queries only
        q = qi if qt is None else torch.cat([qt, qi], 2)
        a = layers.attention(q, torch.cat([kt, ki], 2), torch.cat([vt, vi], 2), key_mask)
        img = self.image.finish(img, a[:, :, n_txt:], mod_i)
        if self.prompt.update:
            txt = self.prompt.finish(txt, a[:, :, :n_txt], mod_t)
        return img, txt


class TinyDiT(nn.Module):
    """Velocity network v(x, sigma, text) on (B, C, H, W) latents (or pixels), as ``TinyUNet``: ``text`` is
    the prompt encoder, ``forward(x, sigma, cond)`` the velocity. Width ``cfg.dit_width``, ``cfg.dit_depth``
    joint blocks, ``cfg.heads`` heads, square patches of ``cfg.dit_patch``."""

    def __init__(self, cfg: TinyConfig, vocab_size: int, in_channels: int, latent_hw: tuple[int, int]):
        super().__init__()
        self.cfg = cfg
        w, e, p = cfg.dit_width, cfg.emb_dim, cfg.dit_patch
        self.grid = (latent_hw[0] // p, latent_hw[1] // p)
        self.text = build_text_encoder(vocab_size, cfg)
        self.time_mlp = nn.Sequential(nn.Linear(128, e), nn.SiLU(), nn.Linear(e, e))
        film = cfg.film_text
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, e), nn.SiLU(), nn.Linear(e, e)) if film else None
        self.patch_in = nn.Conv2d(in_channels, w, p, stride=p)  # a linear map of each patch
        self.prompt_in = nn.Linear(cfg.text_dim, w)
        self.register_buffer("pos", grid_positions(*self.grid, w), persistent=False)
        self.blocks = nn.ModuleList(
            JointBlock(w, cfg.heads, e, update_prompt=i + 1 < cfg.dit_depth) for i in range(cfg.dit_depth)
        )
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(e, 2 * w)
        self.patch_out = nn.Linear(w, in_channels * p * p)
        for layer in (self.ada_out, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.cfg.dit_patch
        emb = self.time_mlp(layers.timestep_embedding(sigma, 128))
        if self.text_proj is not None:
            emb = emb + self.text_proj(cond["pooled"])
        img = self.patch_in(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)
        txt = self.prompt_in(cond["tokens"])
        keys = torch.cat([layers.attend_mask(cond["mask"]), cond["mask"].new_ones(b, img.shape[1])], dim=1)
        key_mask = keys[:, None, None, :]
        for block in self.blocks:
            img, txt = block(img, txt, emb, key_mask)
        shift, scale = self.ada_out(F.silu(emb)).chunk(2, dim=-1)
        h = self.patch_out(self.norm_out(img) * (1 + scale[:, None]) + shift[:, None])  # (B, N, C*p*p)
        gh, gw = self.grid
        h = h.view(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return h.reshape(b, c, hh, ww)
