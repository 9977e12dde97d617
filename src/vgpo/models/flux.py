"""FLUX.1 behind the ``FlowModel`` protocol (LoRA fine-tuning).

* Latents are *packed*: the VAE latent (C, h, w) cut into 2x2 patches, ``latent_shape = (h/2 * w/2,
  4C)`` -- the transformer's own layout. Rollouts, log-probs and the trainer work on the packed
  tensor; ``vgpo.sampling.sde_step`` means its log-density over every non-batch element, so the
  value is the same as over the unpacked latent (a permutation; Flow-GRPO issue #111 took the mean
  over the wrong dims). ``decode`` unpacks, undoes the VAE scaling/shift and decodes in float32.
* No classifier-free guidance: FLUX.1-dev embeds the guidance scale. ``negative_condition`` returns
  None and the condition carries ``"guidance"`` (B,) = ``guidance_scale`` (when the transformer
  has a guidance embedding, i.e. dev; schnell has none). Call ``rollout(..., uncond=None)``.
* ``schedule(n)``: FluxPipeline's ``linspace(1, 1/n, n)`` time-shifted with mu from the image
  sequence length (diffusers' ``calculate_shift``): ``s' = e^mu / (e^mu + (1/s - 1))``, then 0; a
  scheduler without dynamic shifting (schnell) gets the static ``shift*s / (1 + (shift-1)*s)``.
* ``velocity`` calls the transformer with ``timestep = sigma`` (FLUX multiplies by 1000 inside),
  text ids ``zeros(L, 3)`` and the latent image ids (0, row, col) of the packed grid.

Needs the ``real`` extra (diffusers, transformers, peft).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vgpo.errors import VgpoError
from vgpo.models.lora import LoraDiffusersModel, LoraOptions
from vgpo.models.protocol import Condition


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C), FluxPipeline's ``_pack_latents``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w) for a latent of h x w (not pixels)."""
    b, _, d = x.shape
    x = x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def latent_image_ids(h: int, w: int) -> torch.Tensor:
    """(h/2 * w/2, 3) ids (0, row, col) of the packed grid, FluxPipeline's ``_prepare_latent_image_ids``."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def calculate_shift(
    seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """mu, linear in the image sequence length between (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + base_shift - m * base_seq_len


def flux_schedule(
    num_steps: int, mu: float | None = None, shift: float = 1.0, time_shift_type: str = "exponential"
) -> torch.Tensor:
    """FluxPipeline's sigmas for ``num_steps`` steps, (num_steps + 1,) ending in 0.

    With ``mu`` (dynamic shifting): ``e^mu / (e^mu + (1/s - 1))`` ("exponential", FLUX.1) or
    ``mu / (mu + (1/s - 1))`` ("linear"); without: the static shift. Float64 maths, float32 result."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = np.linspace(1.0, 1.0 / num_steps, num_steps, dtype=np.float64)
    if mu is not None:
        k = math.exp(mu) if time_shift_type == "exponential" else mu
        s = k / (k + (1.0 / s - 1.0))
    else:
        s = shift * s / (1.0 + (shift - 1.0) * s)
    return torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))


class FluxFlowModel(LoraDiffusersModel):
    """FlowModel around a ``diffusers.FluxPipeline`` with a LoRA on the transformer.

    Args:
        pipeline: the loaded pipeline (shared, not copied).
        resolution: image size in pixels, int or (H, W), a multiple of 2 x the VAE factor (16).
        guidance_scale: FLUX.1-dev's embedded guidance (3.5 in diffusers' examples); ignored by a
            transformer without guidance embedding.
        device, precision, lora, gradient_checkpointing, vae_batch_size: as ``SD3FlowModel``.
        max_sequence_length: T5 tokens (diffusers' default 512).

    The default LoRA targets (SD3's) match FLUX's double-stream blocks; add e.g. ``proj_mlp`` /
    ``proj_out`` through ``lora.target_modules`` to reach the single-stream blocks' MLP too (their
    attention ``to_q/to_k/to_v`` already match).
    """

    def __init__(
        self,
        pipeline: Any,
        resolution: int | Sequence[int] = 512,
        *,
        guidance_scale: float = 3.5,
        device: str | torch.device | None = None,
        precision: str | None = None,
        lora: LoraOptions | Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        max_sequence_length: int = 512,
        vae_batch_size: int = 8,
    ):
        from diffusers import FluxPipeline

        self.pipeline_class = FluxPipeline
        sched = pipeline.scheduler.config
        if any(
            sched.get(k, False)
            for k in (
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "invert_sigmas",
                "shift_terminal",
                "use_flow_sigmas",
            )
        ):
            raise VgpoError(
                "FluxFlowModel: the pipeline's scheduler uses a sigma transform this adapter does not "
                "reproduce; expected FlowMatchEulerDiscreteScheduler as shipped with FLUX.1"
            )
        encoders = [e for e in (pipeline.text_encoder, pipeline.text_encoder_2) if e is not None]
        self._setup(pipeline, device, precision, lora, gradient_checkpointing, encoders)

        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        hp, wp = (int(v) for v in resolution)
        f = pipeline.vae_scale_factor
        if hp <= 0 or wp <= 0 or hp % (2 * f) or wp % (2 * f):
            raise VgpoError(f"resolution: expected multiples of {2 * f} (VAE factor {f} x 2x2 packing), got {hp}x{wp}")
        self.resolution = (hp, wp)
        self.latent_hw = (hp // f, wp // f)
        h, w = self.latent_hw
        channels = self.transformer.config.in_channels  # already 4 x the VAE's latent channels
        self.latent_shape = ((h // 2) * (w // 2), channels)
        self.image_ids = latent_image_ids(h, w).to(self.device)  # float32: RoPE positions stay exact
        self.guidance_scale = float(guidance_scale)
        self.uses_guidance = bool(self.transformer.config.guidance_embeds)
        self.max_sequence_length = int(max_sequence_length)
        self.vae_batch_size = int(vae_batch_size)

        seq_len = self.latent_shape[0]
        self.time_shift_type = sched.get("time_shift_type", "exponential")
        self.static_shift = float(sched.get("shift", 1.0))
        self.mu = (
            calculate_shift(
                seq_len,
                sched.get("base_image_seq_len", 256),
                sched.get("max_image_seq_len", 4096),
                sched.get("base_shift", 0.5),
                sched.get("max_shift", 1.15),
            )
            if sched.get("use_dynamic_shifting", False)
            else None
        )

    @classmethod
    def load_pipeline_class(cls) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    # --- packing --------------------------------------------------------------------------------
    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        return unpack_latents(x, *self.latent_hw)

    # --- protocol -------------------------------------------------------------------------------
    def schedule(self, num_steps: int) -> torch.Tensor:
        return flux_schedule(num_steps, self.mu, self.static_shift, self.time_shift_type)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        prompts = list(prompts)
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self.uses_guidance:
            cond["guidance"] = torch.full((len(prompts),), self.guidance_scale, device=self.device)
        return cond

    def negative_condition(self, batch_size: int) -> None:
        return None

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).float()
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        embeds = cond["prompt_embeds"]
        text_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=self.image_ids.dtype)
        with self._autocast():
            v = self.transformer(
                hidden_states=x.to(self.dtype),
                timestep=sigma,  # FLUX scales by 1000 internally
                guidance=cond.get("guidance"),
                pooled_projections=cond["pooled_prompt_embeds"],
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=self.image_ids,
                return_dict=False,
            )[0]
        return v.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(self.unpack(x.float()), self.vae_batch_size)
