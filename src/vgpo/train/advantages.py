"""Advantages and per-step weights: the only place where Flow-GRPO and VGPO differ.

Shapes: B samples in groups of G consecutive samples sharing a prompt (``group_ids``), T sampling
steps. Every function returns (B, T): the advantage of step i of sample b.

Flow-GRPO (Liu et al. 2025, arXiv 2505.05470): A_b = (R_b - mean_g R) / (std_g R + eps), the same at
every step; the std is the group's or, with ``global_std``, the batch's (population std, ddof 0).

VGPO (arXiv 2512.12387), as we read it (the paper leaves details open; each choice is a field):
  TCRM  instant rewards R_i for every step (the reward of the step's one-step projection), the value
        Q_i = sum_{k>=i} gamma^(k-i) R_k (reward-to-go) and the step weight omega_i = Q_i / mean_t Q_t.
  ADAE  A_i = omega_i * [(Q_i - mean_g Q_i) / (std_g Q_i + eps) + k_i * Q_i], the paper's
        [(Q - mean) + alpha*Q] / std with alpha = k*std, rewritten so that it stays defined when the
        group's std is 0; k_i = k for the first ``adae_steps`` steps, 0 after.
"""

from __future__ import annotations

import torch

EPS = 1e-4  # Flow-GRPO's std epsilon


def group_mean_std(
    values: torch.Tensor, group_ids: torch.Tensor, global_std: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and population std of ``values`` (B, ...) over the sample's group.

    With ``global_std`` the std is taken over the whole batch (per trailing index), the mean stays per
    group (Flow-GRPO's ``global_std`` option)."""
    values = values.double()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    shape = (counts.numel(), *values.shape[1:])
    sums = torch.zeros(shape, dtype=values.dtype).index_add_(0, inverse, values)
    means = sums / counts.view(-1, *[1] * (values.ndim - 1))
    mean = means[inverse]
    if global_std:
        std = values.std(dim=0, unbiased=False, keepdim=True).expand_as(values)
    else:
        sq = torch.zeros(shape, dtype=values.dtype).index_add_(0, inverse, (values - mean) ** 2)
        std = (sq / counts.view(-1, *[1] * (values.ndim - 1))).sqrt()[inverse]
    return mean.float(), std.float()


def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, num_steps: int, global_std: bool = False
) -> torch.Tensor:
    """Flow-GRPO: A = (R - mean_g R) / (std + 1e-4), broadcast to every step. rewards: (B,)."""
    mean, std = group_mean_std(rewards, group_ids, global_std)
    adv = (rewards.float() - mean) / (std + EPS)
    return adv[:, None].expand(-1, num_steps).contiguous()


def zero_std_groups(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """(B,) bool: the sample's group has (numerically) zero reward std — GRPO has no signal there."""
    _, std = group_mean_std(rewards, group_ids)
    return std <= tol


def reward_to_go(instant: torch.Tensor, gamma: float) -> torch.Tensor:
    """TCRM value Q_i = sum_{k>=i} gamma^(k-i) R_k for instant rewards (B, T)."""
    q = torch.empty_like(instant, dtype=torch.float32)
    running = torch.zeros(instant.shape[0], dtype=torch.float32)
    for i in range(instant.shape[1] - 1, -1, -1):
        running = instant[:, i].float() + gamma * running
        q[:, i] = running
    return q


def step_weights(q: torch.Tensor, min_mean: float = 1e-6) -> torch.Tensor:
    """TCRM omega_i = Q_i / mean_t Q_t per sample.

    Guard (our choice; the paper assumes positive values): where a sample's mean value is <= min_mean
    (all-zero or negative rewards) the ratio is meaningless or flips signs, so that sample's weights are
    1 (plain Flow-GRPO weighting)."""
    mean = q.mean(dim=1, keepdim=True)
    safe = mean > min_mean
    return torch.where(safe, q / torch.where(safe, mean, torch.ones_like(mean)), torch.ones_like(q))


def interpolate_steps(values: torch.Tensor, scored: list[int], num_steps: int) -> torch.Tensor:
    """Fill (B, T) values known only at the sorted step indices ``scored`` by linear interpolation in
    the step index (``tcrm_every`` > 1 scores fewer projections). ``values``: (B, len(scored))."""
    out = torch.empty(values.shape[0], num_steps, dtype=torch.float32)
    for j in range(num_steps):
        hi = next(k for k, s in enumerate(scored) if s >= j)
        if scored[hi] == j:
            out[:, j] = values[:, hi]
        else:
            lo = hi - 1
            w = (j - scored[lo]) / (scored[hi] - scored[lo])
            out[:, j] = (1 - w) * values[:, lo] + w * values[:, hi]
    return out


def scored_steps(num_steps: int, every: int) -> list[int]:
    """Steps whose projection is scored: every ``every``-th step from 0, and always the last."""
    return sorted(set(range(0, num_steps, every)) | {num_steps - 1})


def vgpo_advantages(
    q: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    use_omega: bool,
    adae_k: float,
    adae_steps: int,
    global_std: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_i = omega_i * [(Q_i - mean_g Q_i) / (std_g Q_i + eps) + k_i * Q_i] for values Q (B, T).

    ``use_omega`` False gives omega = 1 (ADAE-only); ``adae_k`` 0 gives plain group normalisation of
    Q (TCRM-only). Returns (advantages, omega)."""
    omega = step_weights(q) if use_omega else torch.ones_like(q)
    mean, std = group_mean_std(q, group_ids, global_std)
    k = torch.zeros(q.shape[1])
    k[: max(0, adae_steps)] = adae_k
    return omega * ((q - mean) / (std + EPS) + k * q), omega
