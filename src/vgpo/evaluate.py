"""Held-out evaluation: ODE sampling of a world's test prompts and the world's metric table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vgpo.config import doc
from vgpo.errors import VgpoError
from vgpo.models.protocol import FlowModel
from vgpo.sampling import batch_randn, rollout
from vgpo.utils import derive_seed
from vgpo.worlds import World


@dataclass(frozen=True)
class EvalConfig:
    """The held-out evaluation settings: ``vgpo eval``'s flags, the trainer's ``eval_*`` fields and the
    bench take their defaults from here."""

    num_steps: int = doc(40, "ODE steps (Flow-GRPO evaluates with 40)")
    guidance_scale: float = doc(4.5, "classifier-free guidance scale")
    images_per_prompt: int = doc(2, "samples per prompt")
    batch_size: int = doc(
        16,
        "prompts per sampling batch (results do not depend on it; on CPU, larger batches "
        "ran slower: their big allocations cost more system time than the batching saves)",
    )
    seed: int = doc(0, "sampling seed: the i-th image's noise depends only on (seed, i)")
    limit: int = doc(0, "use only the first N prompts (0: all)")

    def __post_init__(self) -> None:
        for name in ("num_steps", "images_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise VgpoError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.limit < 0:
            raise VgpoError(f"limit: expected 0 (all) or a positive integer, got {self.limit}")
        if self.guidance_scale < 1.0:
            raise VgpoError(f"guidance_scale: expected >= 1 (1: no guidance), got {self.guidance_scale}")


@dataclass
class EvalResult:
    metrics: dict
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    metadata: list[dict]


@torch.no_grad()
def sample_images(
    model: FlowModel, prompts: Sequence[str], num_steps: int, guidance_scale: float, seed: int, batch_size: int
) -> torch.Tensor:
    """Decoded ODE samples for ``prompts``; the i-th image's initial noise depends only on (seed, i),
    so results do not depend on the batch size."""
    sigmas = model.schedule(num_steps)
    out = []
    with model.fixed_weights():
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            gens = [torch.Generator().manual_seed(derive_seed(seed, "eval", start + j)) for j in range(len(chunk))]
            noise = batch_randn((len(chunk), *model.latent_shape), gens, model.device)
            traj = rollout(
                model,
                model.encode_prompts(chunk),
                model.negative_condition(len(chunk)),
                sigmas,
                0.0,
                guidance_scale,
                x_init=noise,
            )
            out.append(model.decode(traj.final).cpu())
    return torch.cat(out)


def evaluate_world(
    model: FlowModel,
    world: World,
    metadata: Sequence[dict],
    num_steps: int = EvalConfig.num_steps,
    guidance_scale: float = EvalConfig.guidance_scale,
    images_per_prompt: int = EvalConfig.images_per_prompt,
    seed: int = EvalConfig.seed,
    batch_size: int = EvalConfig.batch_size,
) -> EvalResult:
    metas = [m for m in metadata for _ in range(images_per_prompt)]
    images = sample_images(model, [m["prompt"] for m in metas], num_steps, guidance_scale, seed, batch_size)
    return EvalResult(world.evaluate(images, metas), images, metas)
