"""Per-sample PPO and KL terms of Flow-GRPO's update (pure functions)."""

from __future__ import annotations

import torch


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """max(-A*r, -A*clip(r, 1-eps, 1+eps)) per sample with r = exp(logp - logp_old); returns (loss, r)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's closed-form KL between the policy's and the reference's step Gaussians (same std):
    mean over non-batch dims of (mean - ref_mean)^2 / (2 std^2), per sample, (B,), float32.

    ``std`` is the step's ``SDEStepOutput.std``. For the SDE step it lacks the sqrt(-dt) factor, as
    Flow-GRPO uses it (a per-step rescaling of the exact KL). For the CPS step Flow-GRPO's code uses the
    same expression with CPS's std, which is the whole transition std, so the value is the exact
    per-element KL. A deterministic step (std 0: noise level 0, or CPS's last step, s' = 0) has no
    density to regularise and is never trained; such a std raises ValueError instead of giving inf/nan.
    """
    if bool((std == 0).any()):
        raise ValueError("gaussian_kl: std is 0 (a deterministic step, e.g. CPS's last one): no KL to compute")
    sq = (mean.float() - ref_mean.float()) ** 2
    return sq.mean(dim=tuple(range(1, sq.ndim))) / (2 * std.float() ** 2)
