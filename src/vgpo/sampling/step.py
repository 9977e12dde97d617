"""Single integration steps from sigma_i to sigma_(i+1) (< sigma_i).

Conventions (rectified flow, as SD3 and Flow-GRPO): x_s = (1 - s)*x0 + s*noise, the network predicts
v = noise - x0, sampling runs from s = 1 to s = 0. All step maths is done in float32 whatever the
input dtype (as diffusers' schedulers do); samples are cast back to the input dtype, means and
log-probs stay float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


Generators = torch.Generator | Sequence[torch.Generator] | None


def batch_randn(shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise of ``shape`` (batch first) in float32. A list of generators (one per
    sample, as diffusers pipelines accept) makes each sample's noise independent of how samples are
    batched or sharded over processes."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32)
                        for g in generator]).to(device)


@dataclass
class SDEStepOutput:
    """Result of one stochastic step.

    prev_sample: x at sigma_(i+1), shape of x.
    log_prob: (B,) mean over non-batch dims of log N(prev_sample | mean, (std*sqrt(-dt))^2).
    mean: the Gaussian mean of prev_sample, float32 (carries the graph through v; used by the KL).
    std: (scalar tensor) std_t *without* the sqrt(-dt) factor, as Flow-GRPO returns it.
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def predict_x0(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """One-step projection to the data end of the path: x0_hat = x - sigma*v (exact on straight paths)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))) if sigma.ndim == 1 else sigma
    return (x.float() - sigma * v.float()).to(x.dtype)


def ode_step(x: torch.Tensor, v: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x + (sigma_(i+1) - sigma_i) * v."""
    dt = (sigmas[i + 1] - sigmas[i]).float()
    return (x.float() + dt * v.float()).to(x.dtype)


def sde_std(sigmas: torch.Tensor, i: int, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's std_t = a*sqrt(s / (1 - s~)), s~ = s except s == 1, where s~ = sigmas[1]."""
    s = sigmas[i].float()
    s_tilde = torch.where(s == 1.0, sigmas[1].float(), s)
    return noise_level * torch.sqrt(s / (1.0 - s_tilde))


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigmas: torch.Tensor,
    i: int,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: Generators = None,
) -> SDEStepOutput:
    """Flow-GRPO's SDE step (``sde_step_with_logprob``), with s = sigmas[i], s' = sigmas[i+1], dt = s' - s:

        std  = a*sqrt(s / (1 - s~))
        mean = x*(1 + std^2*dt/(2s)) + v*(1 + std^2*(1-s)/(2s))*dt
        prev = mean + std*sqrt(-dt)*eps                      (when prev_sample is None)
        log_prob = mean_pixels log N(prev.detach() | mean, std^2*(-dt))

    The marginals match the ODE's for every a (the drift adds the score term that the noise removes).
    noise_level 0 gives exactly the Euler step ``ode_step``; a deterministic step has no density, so
    log_prob is defined as 0 there (PPO ratios are then exactly 1) and std is 0.
    """
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    out_dtype = x.dtype
    x32, v32 = x.float(), v.float()
    s = sigmas[i].float().to(x.device)
    dt = (sigmas[i + 1].float() - sigmas[i].float()).to(x.device)
    if noise_level == 0:
        mean = x32 + dt * v32
        prev = mean if prev_sample is None else prev_sample.float()
        zeros = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        return SDEStepOutput(prev.to(out_dtype), zeros, mean, torch.zeros((), device=x.device))
    std = sde_std(sigmas, i, noise_level).to(x.device)
    mean = x32 * (1 + std**2 * dt / (2 * s)) + v32 * (1 + std**2 * (1 - s) / (2 * s)) * dt
    scale = std * torch.sqrt(-dt)
    if prev_sample is None:
        eps = batch_randn(x.shape, generator, x.device)
        prev = mean + scale * eps
    else:
        prev = prev_sample.float()
    log_prob = -((prev.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, x.ndim)))
    return SDEStepOutput(prev.to(out_dtype), log_prob, mean, std)
