"""Run a model over a schedule with SDE or ODE steps and classifier-free guidance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vgpo.models.protocol import Condition, FlowModel, cat_conditions
from vgpo.sampling.step import Generators, batch_randn, predict_x0, sde_step


@dataclass
class Trajectory:
    """A batch of sampled trajectories.

    sigmas: (T+1,) the schedule, descending to 0.
    states: (B, T+1, *latent) x_0 .. x_T, states[:, 0] the initial noise, states[:, -1] the sample.
    log_probs: (B, T) log-prob of the step i transition (0 for deterministic steps).
    x0_hat: (B, T, *latent) one-step projections predict_x0(states[:, i], v_i, sigmas[i]) with the
        guided velocity v_i the rollout used at step i (trainers never re-run the model for them).
    """

    sigmas: torch.Tensor
    states: torch.Tensor
    log_probs: torch.Tensor
    x0_hat: torch.Tensor

    @property
    def final(self) -> torch.Tensor:
        return self.states[:, -1]


def guided_velocity(
    model: FlowModel,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: Condition,
    uncond: Condition | None,
    guidance_scale: float,
    detach_uncond: bool = False,
) -> torch.Tensor:
    """v_uncond + g*(v_cond - v_uncond), with cond and uncond in one batch; plain v(cond) when
    ``uncond`` is None or g == 1. ``detach_uncond``: the same value, with no gradient through the
    unconditional branch (Flow-GRPO's update: ``noise_pred_uncond.detach()``), so that only the
    conditional prediction is trained, with weight g."""
    sigma_b = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
    if uncond is None or guidance_scale == 1.0:
        return model.velocity(x, sigma_b, cond)
    v = model.velocity(torch.cat([x, x]), torch.cat([sigma_b, sigma_b]), cat_conditions(cond, uncond))
    v_cond, v_uncond = v.float().chunk(2)
    if detach_uncond:
        v_uncond = v_uncond.detach()
    return (v_uncond + guidance_scale * (v_cond - v_uncond)).to(x.dtype)


@torch.no_grad()
def rollout(
    model: FlowModel,
    cond: Condition,
    uncond: Condition | None,
    sigmas: torch.Tensor,
    noise_level: float | Sequence[float],
    guidance_scale: float,
    generator: Generators = None,
    x_init: torch.Tensor | None = None,
    sde_type: str = "sde",
) -> Trajectory:
    """Sample len(sigmas)-1 steps from noise. ``noise_level`` 0 is the Euler ODE (evaluation);
    > 0 is a stochastic step of ``sde_type`` (``sde``: Flow-GRPO's SDE; ``cps``: coefficients-preserving,
    see ``sde_step``); a sequence gives each step its own level (SDE on a window of steps, ODE elsewhere,
    as Flow-GRPO-Fast). ``generator``: one, or a list with one per sample."""
    levels = [noise_level] * (len(sigmas) - 1) if isinstance(noise_level, (int, float)) else list(noise_level)
    if len(levels) != len(sigmas) - 1:
        raise ValueError(f"noise_level: {len(levels)} levels for {len(sigmas) - 1} steps")
    batch = next(iter(cond.values())).shape[0]
    device = model.device
    sigmas = sigmas.to(device)
    if x_init is None:
        x_init = batch_randn((batch, *model.latent_shape), generator, device)
    x = x_init
    states, log_probs, x0_hats = [x], [], []
    for i in range(len(sigmas) - 1):
        v = guided_velocity(model, x, sigmas[i], cond, uncond, guidance_scale)
        x0_hats.append(predict_x0(x, v, sigmas[i]))
        out = sde_step(x, v, sigmas, i, levels[i], generator=generator, sde_type=sde_type)
        x = out.prev_sample
        states.append(x)
        log_probs.append(out.log_prob)
    return Trajectory(
        sigmas=sigmas,
        states=torch.stack(states, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        x0_hat=torch.stack(x0_hats, dim=1),
    )
