"""The model protocol every text-to-image flow model implements.

A *condition* is a dict of tensors whose first dimension is the batch (token embeddings, masks,
pooled embeddings, FLUX's text ids and guidance, ...). The trainer only concatenates and indexes
conditions; what is inside is the model's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch

Condition = dict[str, torch.Tensor]


def cat_conditions(*conds: Condition) -> Condition:
    """Concatenate conditions along the batch dimension (for CFG: cond and uncond in one batch)."""
    keys = conds[0].keys()
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in keys}


def slice_condition(cond: Condition, rows: slice) -> Condition:
    """The rows ``rows`` of a condition (the batch dimension)."""
    return {k: v[rows] for k, v in cond.items()}


@runtime_checkable
class FlowModel(Protocol):
    """What the sampler and the trainer need from a model.

    ``x`` lives in the model's *latent* space (pixels for the tiny model, VAE latents for SD3/FLUX);
    ``sigma`` is the flow time in [0, 1] of shape (B,), with x_sigma = (1-sigma)*x0 + sigma*noise and
    the velocity v = noise - x0.
    """

    latent_shape: tuple[int, ...]
    device: torch.device
    #: the dtype the network's matmuls run in (float32, or bf16/fp16 under autocast or in reduced-precision
    #: weights): below float32, kernels may round one sample differently at another batch size.
    compute_dtype: torch.dtype

    def schedule(self, num_steps: int) -> torch.Tensor:
        """The model's sigmas for ``num_steps`` steps, (num_steps + 1,) descending to 0."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        """Encode prompts (frozen text encoders, no grad)."""
        ...

    def negative_condition(self, batch_size: int) -> Condition | None:
        """The unconditional/negative condition for classifier-free guidance, or None when the model
        does not use CFG (FLUX-dev embeds guidance instead)."""
        ...

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Predicted velocity v(x, sigma, cond), same shape as x."""
        ...

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents to images (B, 3, H, W) float32 in [0, 1] (identity + clamp in pixel space)."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters RL updates (LoRA adapters or the full network)."""
        ...

    def reference(self) -> AbstractContextManager[None]:
        """Context in which ``velocity`` is the frozen reference policy (adapter disabled, or the
        frozen copy of the base weights under full fine-tuning)."""
        ...

    def fixed_weights(self) -> AbstractContextManager[None]:
        """Context in which the caller keeps the weights fixed (enter it after any weight swap): ``velocity``
        without grad may reuse what depends only on the weights (merged LoRA weights), with identical outputs."""
        ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights, for checkpoints (LoRA in PEFT's naming, or the full network)."""
        ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``trainable_state_dict``."""
        ...

    def fsdp_units(self) -> tuple[torch.nn.Module, list[torch.nn.Module], list[torch.nn.Module]]:
        """(root, blocks, whole) of the trained network for FSDP sharding (``TrainConfig.fsdp``): each
        block and then the root become a ``fully_shard`` unit; the ``whole`` submodules, which the
        adapter calls on their own (the tiny model's frozen text encoder), are left unsharded."""
        ...
