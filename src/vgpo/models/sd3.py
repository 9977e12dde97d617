"""Stable Diffusion 3 / 3.5 behind the ``FlowModel`` protocol (LoRA fine-tuning, as Flow-GRPO).

* Latents are the VAE's (``latent_shape = (C, H/f, W/f)``, f = the VAE's downsampling, 8 for SD3);
  ``decode`` undoes SD3's ``scaling_factor``/``shift_factor`` and runs the VAE in float32.
* Prompts go through the pipeline's own ``encode_prompt`` (two CLIPs and T5, frozen, no grad): the
  condition is ``{"prompt_embeds": (B, 77+L, D), "pooled_prompt_embeds": (B, P)}``. The negative
  condition is the empty prompt's encoding, cached (Flow-GRPO's CFG; diffusers' default too).
* ``schedule(n)`` is ``vgpo.sampling.flow_schedule(n, shift)`` with the pipeline scheduler's shift
  (3.0 for SD3.5-M), identical to the scheduler's own ``set_timesteps(n)`` sigmas.
* ``velocity(x, sigma, c)`` calls the transformer with timestep ``1000*sigma``; its output is
  diffusers' flow velocity ``noise - x0``, exactly our convention (an Euler ``ode_step`` equals the
  scheduler's ``step``, and our ODE rollout reproduces ``pipeline(...)``; see tests).

Needs the ``real`` extra (diffusers, transformers, peft). Example::

    model = SD3FlowModel.from_pretrained("stabilityai/stable-diffusion-3.5-medium", resolution=512)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vgpo.errors import VgpoError
from vgpo.models.lora import LoraDiffusersModel, LoraOptions
from vgpo.models.protocol import Condition
from vgpo.sampling.schedule import flow_schedule


def _resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = (int(v) for v in resolution)
    return h, w


class SD3FlowModel(LoraDiffusersModel):
    """FlowModel around a ``diffusers.StableDiffusion3Pipeline`` with a LoRA on the transformer.

    Args:
        pipeline: the loaded pipeline (components are moved to ``device``, the transformer gets the
            adapter; the object is shared, not copied).
        resolution: image size in pixels, an int or (H, W); a multiple of VAE factor x patch size.
        device: default CUDA when available.
        precision: "bf16" (default on CUDA), "fp16" or "fp32" (default on CPU): frozen weights' dtype
            and the transformer's autocast dtype. LoRA weights, the VAE and step maths are float32.
        lora: ``LoraOptions`` or a map of its fields (default r=32, alpha=64, Flow-GRPO's targets).
        gradient_checkpointing: transformer activation checkpointing (non-reentrant).
        max_sequence_length: T5 tokens (diffusers' default 256; Flow-GRPO uses 128).
        negative_prompt: the CFG negative prompt ("" as Flow-GRPO).
        vae_batch_size: images decoded at once.
    """

    def __init__(
        self,
        pipeline: Any,
        resolution: int | Sequence[int] = 512,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        lora: LoraOptions | Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        max_sequence_length: int = 256,
        negative_prompt: str = "",
        vae_batch_size: int = 8,
    ):
        from diffusers import StableDiffusion3Pipeline

        self.pipeline_class = StableDiffusion3Pipeline
        sched = pipeline.scheduler.config
        if sched.get("use_dynamic_shifting", False) or any(
            sched.get(k, False)
            for k in (
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "invert_sigmas",
                "shift_terminal",
            )
        ):
            raise VgpoError(
                "SD3FlowModel: the pipeline's scheduler uses a non-static sigma schedule; only "
                "FlowMatchEulerDiscreteScheduler with a fixed shift (SD3/SD3.5) is supported"
            )
        self.shift = float(sched.get("shift", 1.0))
        self.num_train_timesteps = int(sched.get("num_train_timesteps", 1000))
        encoders = [
            e for e in (pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3) if e is not None
        ]
        self._setup(pipeline, device, precision, lora, gradient_checkpointing, encoders)

        h, w = _resolution(resolution)
        f = pipeline.vae_scale_factor
        p = self.transformer.config.patch_size
        if h <= 0 or w <= 0 or h % (f * p) or w % (f * p):
            raise VgpoError(f"resolution: expected multiples of {f * p} (VAE factor {f} x patch {p}), got {h}x{w}")
        self.resolution = (h, w)
        self.latent_shape = (self.transformer.config.in_channels, h // f, w // f)
        self.max_sequence_length = int(max_sequence_length)
        self.negative_prompt = negative_prompt
        self.vae_batch_size = int(vae_batch_size)
        self._negative: Condition | None = None

    @classmethod
    def load_pipeline_class(cls) -> type:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    # --- protocol -------------------------------------------------------------------------------
    def schedule(self, num_steps: int) -> torch.Tensor:
        return flow_schedule(num_steps, self.shift, self.num_train_timesteps)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        prompts = list(prompts)
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def negative_condition(self, batch_size: int) -> Condition:
        if self._negative is None:
            self._negative = self.encode_prompts([self.negative_prompt])
        return {k: v.expand(batch_size, *v.shape[1:]) for k, v in self._negative.items()}

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).float()
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        timestep = sigma * self.num_train_timesteps  # diffusers' SD3 timestep convention
        with self._autocast():
            v = self.transformer(
                hidden_states=x.to(self.dtype),
                timestep=timestep,
                encoder_hidden_states=cond["prompt_embeds"],
                pooled_projections=cond["pooled_prompt_embeds"],
                return_dict=False,
            )[0]
        return v.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self._vae_decode(x, self.vae_batch_size)
