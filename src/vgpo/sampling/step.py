"""Single integration steps from sigma_i to sigma_(i+1) (< sigma_i).

Conventions (rectified flow, as SD3 and Flow-GRPO): x_s = (1 - s)*x0 + s*noise, the network predicts
v = noise - x0, sampling runs from s = 1 to s = 0. All step maths is done in float32 whatever the
input dtype (as diffusers' schedulers do); samples are cast back to the input dtype, means and
log-probs stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    return torch.stack(
        [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
    ).to(device)


SDE_TYPES = ("sde", "cps")


@dataclass
class SDEStepOutput:
    """Result of one stochastic step; what log_prob and std mean depends on the step's ``sde_type``.

    prev_sample: x at sigma_(i+1), shape of x.
    log_prob: (B,) per sample, float32.
        sde: mean over non-batch dims of log N(prev_sample | mean, (std*sqrt(-dt))^2), a true log-density.
        cps: minus the mean over non-batch dims of (prev_sample - mean)^2, as Flow-GRPO's code computes
             it: no 1/(2 std^2) scale and no constants, so it is not a log-density and a PPO ratio
             exp(log_prob - old_log_prob) differs from the Gaussian's (the scale is part of the algorithm).
    mean: the Gaussian mean of prev_sample, float32 (carries the graph through v; used by the KL).
    std: (scalar tensor, float32)
        sde: std_t *without* the sqrt(-dt) factor, as Flow-GRPO returns it.
        cps: the full transition std, sigma_(i+1)*sin(a*pi/2) (prev = mean + std*eps); 0 at the last step.
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
    sde_type: str = "sde",
) -> SDEStepOutput:
    """One stochastic step from s = sigmas[i] to s' = sigmas[i+1], dt = s' - s, a = noise_level.

    ``sde_type="sde"``: Flow-GRPO's SDE step (``sde_step_with_logprob``, Liu et al. 2025, arXiv 2505.05470):

        std  = a*sqrt(s / (1 - s~))
        mean = x*(1 + std^2*dt/(2s)) + v*(1 + std^2*(1-s)/(2s))*dt
        prev = mean + std*sqrt(-dt)*eps                      (when prev_sample is None)
        log_prob = mean_pixels log N(prev.detach() | mean, std^2*(-dt))

    The marginals match the ODE's for every a (the drift adds the score term that the noise removes).

    ``sde_type="cps"``: coefficients-preserving sampling (Wang & Yu 2025, arXiv 2509.05952) as the
    ``cps`` branch of Flow-GRPO's ``sde_step_with_logprob`` computes it, a in [0, 1]:

        std    = s'*sin(a*pi/2)                                (full transition std, no sqrt(-dt))
        x0_hat = x - s*v,   x1_hat = x + (1 - s)*v
        mean   = x0_hat*(1 - s') + x1_hat*sqrt(s'^2 - std^2)
        prev   = mean + std*eps                                 (when prev_sample is None)
        log_prob = -mean_pixels (prev.detach() - mean)^2        (no 1/(2 std^2), no constants)

    The noise replaces part of the predicted noise x1_hat so the coefficients of x0_hat and of the
    total noise stay (1 - s', s'). At the last step (s' = 0) std is 0, prev = mean = x0_hat and the
    log-prob stays finite (it is never divided by std).

    For both types noise_level 0 gives exactly the Euler step ``ode_step``; a deterministic step has no
    density, so log_prob is defined as 0 there (PPO ratios are then exactly 1; such a step is never
    trained) and std is 0. All maths is float32 (see the module docstring).
    """
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_type must be one of {SDE_TYPES}, got {sde_type!r}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if sde_type == "cps" and noise_level > 1:
        raise ValueError(f"noise_level must be in [0, 1] for sde_type='cps' (std = s'*sin(a*pi/2)), got {noise_level}")
    out_dtype = x.dtype
    x32, v32 = x.float(), v.float()
    s = sigmas[i].float().to(x.device)
    dt = (sigmas[i + 1].float() - sigmas[i].float()).to(x.device)
    if noise_level == 0:
        mean = x32 + dt * v32
        prev = mean if prev_sample is None else prev_sample.float()
        zeros = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        return SDEStepOutput(prev.to(out_dtype), zeros, mean, torch.zeros((), device=x.device))
    if sde_type == "cps":
        return _cps_step(
            x32, v32, s, sigmas[i + 1].float().to(x.device), noise_level, prev_sample, generator, out_dtype
        )
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


def cps_std(sigma_next: torch.Tensor, noise_level: float) -> torch.Tensor:
    """CPS's transition std s'*sin(a*pi/2) (Flow-GRPO's ``cps`` branch), float32."""
    return sigma_next.float() * math.sin(noise_level * math.pi / 2)


def _cps_step(
    x32: torch.Tensor,
    v32: torch.Tensor,
    s: torch.Tensor,
    s_next: torch.Tensor,
    noise_level: float,
    prev_sample: torch.Tensor | None,
    generator: Generators,
    out_dtype: torch.dtype,
) -> SDEStepOutput:
    std = cps_std(s_next, noise_level)
    x0_hat = x32 - s * v32
    x1_hat = x32 + (1 - s) * v32
    # s' * sin(.) rounds to at most s', so the square root's argument is >= 0 (exactly 0 for a = 1).
    mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt(s_next**2 - std**2)
    if prev_sample is None:
        prev = mean + std * batch_randn(x32.shape, generator, x32.device)
    else:
        prev = prev_sample.float()
    log_prob = -((prev.detach() - mean) ** 2).mean(dim=tuple(range(1, x32.ndim)))
    return SDEStepOutput(prev.to(out_dtype), log_prob, mean, std)
