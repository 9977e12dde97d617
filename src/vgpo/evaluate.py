"""Held-out evaluation: ODE sampling of a world's test prompts and the world's metric table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vgpo.models.protocol import FlowModel
from vgpo.sampling import batch_randn, rollout
from vgpo.utils import derive_seed
from vgpo.worlds import World


@dataclass
class EvalResult:
    metrics: dict
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    metadata: list[dict]


@torch.no_grad()
def sample_images(model: FlowModel, prompts: Sequence[str], num_steps: int, guidance_scale: float,
                  seed: int, batch_size: int) -> torch.Tensor:
    """Decoded ODE samples for ``prompts``; the i-th image's initial noise depends only on (seed, i),
    so results do not depend on the batch size."""
    sigmas = model.schedule(num_steps)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        gens = [torch.Generator().manual_seed(derive_seed(seed, "eval", start + j)) for j in range(len(chunk))]
        noise = batch_randn((len(chunk), *model.latent_shape), gens, model.device)
        traj = rollout(model, model.encode_prompts(chunk), model.negative_condition(len(chunk)), sigmas,
                       0.0, guidance_scale, x_init=noise)
        out.append(model.decode(traj.final).cpu())
    return torch.cat(out)


def evaluate_world(model: FlowModel, world: World, metadata: Sequence[dict], num_steps: int = 40,
                   guidance_scale: float = 4.5, images_per_prompt: int = 1, seed: int = 0,
                   batch_size: int = 128) -> EvalResult:
    metas = [m for m in metadata for _ in range(images_per_prompt)]
    images = sample_images(model, [m["prompt"] for m in metas], num_steps, guidance_scale, seed, batch_size)
    return EvalResult(world.evaluate(images, metas), images, metas)
