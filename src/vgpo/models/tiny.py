"""The tiny text-to-image flow model: a ~2M-parameter pixel-space U-Net with a small text encoder.

Chosen by measurement: a pixel DiT with 4x4 patches drew blocky patch noise at this
budget, a small U-Net (FiLM from time + pooled text, self- and cross-attention to the prompt tokens
at the two coarse resolutions) drew clean shapes. On an autoencoder's latents (``latent``) the
``backbone`` option can instead select a small MM-DiT (``dit.py``, 1x1 patches, no patch noise to
draw). ``TinyFlowModel`` wraps either in the FlowModel protocol; pretraining calls the network
directly so that the text encoder is trained too, RL keeps the text encoder frozen (as SD3's) and
updates either the whole network (full fine-tuning, the frozen checkpoint as the reference policy) or
a PEFT LoRA adapter on it (``lora`` option: the adapter-disabled network as the reference, as
Flow-GRPO and our SD3/FLUX adapters do).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vgpo.errors import VgpoError
from vgpo.models import layers
from vgpo.models.autoencoder import Autoencoder, load_autoencoder
from vgpo.models.dit import TinyDiT, grid_positions
from vgpo.models.lora import (
    LoraOptions,
    adapters_disabled,
    add_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    merged_weights_reused,
)
from vgpo.models.protocol import Condition
from vgpo.models.text_encoder import build_text_encoder
from vgpo.models.tokenizer import PromptTokenizer
from vgpo.perf import keep_freed_memory
from vgpo.sampling.schedule import flow_schedule
from vgpo.utils import atomic_save_safetensors, atomic_write_text, load_safetensors

#: Values of ``TinyConfig.backbone``.
TINY_BACKBONES: tuple[str, ...] = ("unet", "dit")


@dataclass
class TinyConfig:
    """Architecture of the tiny model (stored in the checkpoint's config.json)."""

    vocab: list[str] = field(default_factory=list)  # world words + quoted-text characters
    image_size: tuple[int, int] = (32, 32)  # (H, W), multiples of 4
    channels: tuple[int, int, int] = (32, 64, 128)  # U-Net widths at full, 1/2 and 1/4 resolution
    text_dim: int = 128  # text encoder width (also the cross-attention key/value width)
    text_layers: int = 2
    heads: int = 4
    max_tokens: int = 24
    emb_dim: int = 256  # FiLM embedding (time + pooled text)
    shift: float = 3.0  # schedule shift, as SD3.5-M (the quirk of flow_schedule included)
    world: str = "shapes"
    text_encoder: str = "mean"  # models/text_encoder.py: "mean" (the shipped bases) or "ordered" (keeps word order)
    latent: str = ""  # autoencoder folder (`vgpo pretrain-ae`) whose latents the U-Net works in; "" = pixels
    # The pooled prompt in every ResBlock's FiLM (the shipped bases, as SD3's pooled CLIP); False: the prompt
    # reaches the U-Net only through cross-attention, which is spatial, so a colour can only be drawn where
    # the pixels attend to it (a probe of attribute binding, docs/learning-study.md).
    film_text: bool = True
    # Cross-attention to the prompt also at full resolution (after the first and last ResBlocks; no
    # self-attention there, whose cost grows with the square of the pixel count). Another binding probe.
    full_res_cross_attention: bool = False
    # Fixed 2-D positions (models/dit.py's grid_positions) added to the U-Net's cross-attention queries through
    # a zero-initialised linear map, so which pixels read a word can depend on where they are before the image
    # shows anything (a conv U-Net knows position only from its padding). Zero-initialised, it starts as the
    # network without it: a base can be fine-tuned into one (`vgpo pretrain --init`). For relation binding.
    query_positions: bool = False
    # The denoising network: "unet" (TinyUNet; the shipped bases) or "dit" (models/dit.py: SD3's joint-attention
    # MM-DiT, every latent position attending to every prompt token in every block; meant for latents).
    backbone: str = "unet"
    dit_width: int = 256  # DiT token width
    dit_depth: int = 6  # DiT joint blocks
    dit_patch: int = 1  # DiT square patch side, in latent (or pixel) units

    def __post_init__(self) -> None:
        if self.backbone not in TINY_BACKBONES:
            raise VgpoError(f"backbone: expected one of {', '.join(TINY_BACKBONES)}, got {self.backbone!r}")
        if self.backbone == "dit":
            # Split evenly across the heads, and in two halves for the rows' and columns' positions.
            if self.dit_width < 2 or self.dit_width % self.heads or self.dit_width % 2:
                raise VgpoError(f"dit_width: expected an even multiple of heads={self.heads}, got {self.dit_width}")
            if self.dit_depth < 1 or self.dit_patch < 1:
                raise VgpoError(f"dit_depth, dit_patch: expected >= 1, got {self.dit_depth}, {self.dit_patch}")
            if self.full_res_cross_attention:
                raise VgpoError("full_res_cross_attention: a U-Net option; the DiT reads the prompt in every block")
            if self.query_positions:
                raise VgpoError("query_positions: a U-Net option; the DiT's tokens carry positions already")


#: LoRA targets on the tiny U-Net: the attention projections (Flow-GRPO's choice on SD3) plus the
#: ResBlocks' convolutions and FiLM, since a pixel U-Net of this size draws its layout in convolutions.
TINY_LORA_TARGETS: tuple[str, ...] = ("qkv", "out1", "q", "kv", "out2", "film", "conv1", "conv2")


#: ``precision`` values: the network's forward (and so its backward) in float32, or under bfloat16
#: autocast (weights stay float32; matmuls and convolutions run in bf16, norms and softmax in float32).
#: ``auto`` is bf16 where the device computes bf16 natively (CUDA; a CPU with AVX512_BF16 or AMX, as
#: oneDNN reports), else fp32: on our 2-core AVX512_BF16 CPU bf16 ran a Shapes epoch faster (docs/speed.md).
TINY_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` replaced by what this device runs fastest (fp32 or bf16)."""
    if precision not in TINY_PRECISIONS:
        raise VgpoError(f"model_options.precision: expected one of {', '.join(TINY_PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


#: Width of the fixed 2-D position code of TinyConfig.query_positions.
QUERY_POSITION_DIM = 32


class AttnBlock(nn.Module):
    """Self-attention over pixels (unless ``self_attention`` is False), then cross-attention from pixels to
    the prompt tokens."""

    def __init__(self, ch: int, text_dim: int, heads: int, self_attention: bool = True, positions: bool = False):
        super().__init__()
        self.heads = heads
        self.self_attention = self_attention
        if self_attention:
            self.norm1 = nn.GroupNorm(8, ch)
            self.qkv = nn.Linear(ch, 3 * ch)
            self.out1 = nn.Linear(ch, ch)
        self.norm2 = nn.GroupNorm(8, ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(text_dim, 2 * ch)
        self.q_pos = nn.Linear(QUERY_POSITION_DIM, ch, bias=False) if positions else None  # TinyConfig.query_positions
        if self.q_pos is not None:
            nn.init.zeros_(self.q_pos.weight)
        self.out2 = nn.Linear(ch, ch)
        for out in (self.out1, self.out2) if self_attention else (self.out2,):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        # Set by the grounding and relation losses of pretraining: keep the cross-attention's probabilities,
        # (B, heads, pixels, tokens), of the last forward in ``cross_attention`` (with their graph). CPU
        # autocast runs the matmul and softmax below in bf16 despite the casts; the losses upcast.
        self.keep_cross_attention = False
        self.cross_attention: torch.Tensor | None = None

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)

    def forward(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        b, c, hh, ww = x.shape
        if self.self_attention:
            h = self.norm1(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            a = layers.attention(self._split(q), self._split(k), self._split(v))
            x = x + self.out1(self._merge(a)).transpose(1, 2).view(b, c, hh, ww)
        h = self.norm2(x).flatten(2).transpose(1, 2)
        k, v = self.kv(cond["tokens"]).chunk(2, dim=-1)
        mask = layers.attend_mask(cond["mask"])
        q = self.q(h)
        if self.q_pos is not None:
            q = q + self.q_pos(grid_positions(hh, ww, QUERY_POSITION_DIM).to(h))
        q, k = self._split(q), self._split(k)
        a = layers.attention(q, k, self._split(v), mask[:, None, None, :])
        if self.keep_cross_attention:
            logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
            self.cross_attention = logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        return x + self.out2(self._merge(a)).transpose(1, 2).view(b, c, hh, ww)


class TinyUNet(nn.Module):
    """Velocity network v(x, sigma, text) on (B, 3, H, W) pixels in [-1, 1], or on autoencoder latents."""

    def __init__(self, cfg: TinyConfig, vocab_size: int, in_channels: int = 3):
        super().__init__()
        c0, c1, c2 = cfg.channels
        e = cfg.emb_dim
        self.cfg = cfg
        self.text = build_text_encoder(vocab_size, cfg)
        self.time_mlp = nn.Sequential(nn.Linear(128, e), nn.SiLU(), nn.Linear(e, e))
        film = cfg.film_text
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, e), nn.SiLU(), nn.Linear(e, e)) if film else None
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, e)
        full = cfg.full_res_cross_attention
        attn = partial(AttnBlock, text_dim=cfg.text_dim, heads=cfg.heads, positions=cfg.query_positions)
        self.attn_d0 = attn(c0, self_attention=False) if full else None
        self.pool0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1, self.attn_d1 = ResBlock(c0, c1, e), attn(c1)
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2, self.attn_d2 = ResBlock(c1, c2, e), attn(c2)
        self.mid, self.attn_mid = ResBlock(c2, c2, e), attn(c2)
        self.up2, self.attn_u2 = ResBlock(c2 + c2, c2, e), attn(c2)
        self.up1, self.attn_u1 = ResBlock(c2 + c1, c1, e), attn(c1)
        self.up0 = ResBlock(c1 + c0, c0, e)
        self.attn_u0 = attn(c0, self_attention=False) if full else None
        self.norm_out = nn.GroupNorm(8, c0)
        self.conv_out = nn.Conv2d(c0, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        emb = self.time_mlp(layers.timestep_embedding(sigma, 128))
        if self.text_proj is not None:
            emb = emb + self.text_proj(cond["pooled"])
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
        h0 = self.down0(self.conv_in(x), emb)
        if self.attn_d0 is not None:
            h0 = self.attn_d0(h0, cond)
        h1 = self.attn_d1(self.down1(self.pool0(h0), emb), cond)
        h2 = self.attn_d2(self.down2(self.pool1(h1), emb), cond)
        h = self.attn_mid(self.mid(h2, emb), cond)
        h = self.attn_u2(self.up2(torch.cat([h, h2], 1), emb), cond)
        h = self.attn_u1(self.up1(torch.cat([up(h), h1], 1), emb), cond)
        h = self.up0(torch.cat([up(h), h0], 1), emb)
        if self.attn_u0 is not None:
            h = self.attn_u0(h, cond)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_network(cfg: TinyConfig, vocab_size: int, latent_shape: tuple[int, ...]) -> nn.Module:
    """The backbone ``cfg.backbone`` names, for latents of ``latent_shape`` (C, H, W)."""
    if cfg.backbone == "dit":
        if latent_shape[1] % cfg.dit_patch or latent_shape[2] % cfg.dit_patch:
            raise VgpoError(f"dit_patch: {cfg.dit_patch} does not divide the latent size {tuple(latent_shape[1:])}")
        return TinyDiT(cfg, vocab_size, latent_shape[0], tuple(latent_shape[1:]))
    return TinyUNet(cfg, vocab_size, latent_shape[0])


class TinyFlowModel:
    """FlowModel protocol around ``TinyUNet`` or ``TinyDiT``. Latents are pixels scaled to [-1, 1], or the
    scaled latents of the autoencoder ``cfg.latent`` names (decoded before every reward).

    ``precision`` (``TINY_PRECISIONS``) sets how ``velocity`` runs the network; velocities come back in
    the latents' dtype (float32), so step maths, log-probs and losses stay float32. The text encoder
    (frozen in RL, run once per batch) always runs in float32."""

    def __init__(
        self, cfg: TinyConfig, net: nn.Module | None = None, device: str | torch.device = "cpu", precision: str = "auto"
    ):
        self.cfg = cfg
        self.lora_options: LoraOptions | None = None
        self.tokenizer = PromptTokenizer(cfg.vocab, cfg.max_tokens)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.compute_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        if self.device.type == "cpu":
            keep_freed_memory()
        # Frozen pixel codec when the model works in an autoencoder's latent space (as SD3 on its VAE).
        self.autoencoder: Autoencoder | None = (
            load_autoencoder(cfg.latent, cfg.image_size, self.device) if cfg.latent else None
        )
        self.latent_shape = self.autoencoder.latent_shape if self.autoencoder else (3, *cfg.image_size)
        self.net = (net or build_network(cfg, self.tokenizer.vocab_size, self.latent_shape)).to(self.device)
        self._reference_net: nn.Module | None = None
        self._null: Condition | None = None

    # --- protocol -------------------------------------------------------------------------------
    def schedule(self, num_steps: int) -> torch.Tensor:
        return flow_schedule(num_steps, self.cfg.shift)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        return self.net.text(*self.tokenize(prompts))

    def negative_condition(self, batch_size: int) -> Condition:
        if self._null is None:
            self._null = self.encode_prompts([""])
        return {k: v.expand(batch_size, *v.shape[1:]) for k, v in self._null.items()}

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            v = self.net(x, sigma, cond)
        return v.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.autoencoder:
            return self.autoencoder.decode_latents(x)
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] to latents (pretraining data)."""
        if self.autoencoder:
            return self.autoencoder.encode_latents(images.to(self.device))
        return images.to(self.device) * 2.0 - 1.0

    def add_lora(self, options: LoraOptions) -> None:
        """Freeze the network and train a LoRA adapter on it instead (PEFT; B = 0, so it starts as the
        checkpoint). The reference policy becomes the adapter-disabled network; no copy is kept."""
        add_lora(self.net, options)
        self.lora_options = options
        self._reference_net = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self.lora_options:
            return lora_parameters(self.net)
        text = {id(p) for p in self.net.text.parameters()}  # everything but the frozen text encoder
        return [p for p in self.net.parameters() if id(p) not in text]

    def snapshot_reference(self) -> None:
        """Freeze a copy of the current weights as the reference policy (full fine-tuning's KL anchor).
        ``load`` does this, so the reference is the checkpoint as loaded, whatever is trained after."""
        self._reference_net = copy.deepcopy(self.net).requires_grad_(False)

    @contextmanager
    def reference(self) -> Iterator[None]:
        if self.lora_options:
            with adapters_disabled(self.net):
                yield
            return
        if self._reference_net is None:
            raise RuntimeError("no reference policy: load() a checkpoint or call snapshot_reference()")
        current, self.net = self.net, self._reference_net
        try:
            yield
        finally:
            self.net = current

    def fixed_weights(self) -> AbstractContextManager[None]:
        return merged_weights_reused(self.net, self.lora_options)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self.lora_options:
            return lora_state_dict(self.net)
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.lora_options:
            load_lora_state_dict(self.net, state)
        else:
            self.net.load_state_dict(state)

    def fsdp_units(self) -> tuple[nn.Module, list[nn.Module], list[nn.Module]]:
        # The network's children with weights are units (each of the DiT's joint blocks one); the frozen text
        # encoder, which encode_prompts calls on its own, stays whole.
        children = [m for m in self.net.children() if m is not self.net.text and list(m.parameters())]
        blocks = [b for m in children for b in (m if isinstance(m, nn.ModuleList) else [m])]  # the DiT's blocks
        return self.net, blocks, [self.net.text]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # --- checkpoints ----------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` atomically (temp file, then rename)."""
        if self.lora_options:
            raise VgpoError("save: a LoRA-wrapped tiny model has no full checkpoint; save trainable_state_dict()")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.trainable_state_dict(), directory / "model.safetensors")
        meta = {"model": "tiny", "arch": asdict(self.cfg), **(extra or {})}
        atomic_write_text(json.dumps(meta, indent=2) + "\n", directory / "config.json")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu", precision: str = "auto") -> TinyFlowModel:
        directory = Path(directory)
        cfg_path, weights = directory / "config.json", directory / "model.safetensors"
        for path in (cfg_path, weights):
            if not path.is_file():
                raise VgpoError(
                    f"checkpoint {directory}: missing {path.name} (expected a folder written by `vgpo pretrain`)"
                )
        try:
            meta = json.loads(cfg_path.read_text())
            arch = dict(meta["arch"])
            arch["image_size"], arch["channels"] = tuple(arch["image_size"]), tuple(arch["channels"])
            cfg = TinyConfig(**arch)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise VgpoError(f"{cfg_path}: not a tiny-model config ({err})") from None
        model = cls(cfg, device=device, precision=precision)
        model.load_trainable_state_dict(load_safetensors(weights, device=str(model.device)))
        model.net.text.requires_grad_(False)  # RL keeps the text encoder frozen (pretraining builds its own)
        model.snapshot_reference()
        return model
