"""Per-sample losses of the flow-matching objectives (pure functions, float32 maths).

Both objectives train on the generated clean samples x0 under the forward process: fresh noise n, a
fresh time t, x_t = (1 - t)*x0 + t*n, and the flow-matching target n - x0 (rectified flow, as SD3 and
Flow-GRPO: the network predicts v = noise - x0). They need no SDE log-probs, so they work with ODE or
CPS rollouts.

- DiffusionNFT (Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward
  Process", arXiv 2509.16117): ``optimality_probability`` and ``nft_loss``.
- Advantage Weighted Matching (Xue et al. 2025, arXiv 2509.25050): ``awm_log_likelihood`` and
  ``awm_loss``.
- ``advantage_at_time``: a per-step advantage (TCRM's dense values) read at a training time t.
- ``velocity_kl``: the velocity-space penalty both papers' code adds towards a reference/EMA policy.

Every function upcasts its inputs to float32 (whatever the model's dtype) and returns float32
per-sample values of shape (B,): summing them over a batch, or over micro-batches that split it,
gives the same total and the same gradients.
"""

from __future__ import annotations

import torch

NFT_WEIGHTINGS = ("adaptive", "none")
AWM_WEIGHTINGS = ("uniform", "t", "t2", "ghuber")
ADVANTAGE_MODES = ("linear", "nearest")


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def _batch_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t of shape (B,) (or a scalar) as a float32 tensor broadcasting against ``like`` (B, ...)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim == 1 else t


def fm_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The forward process x_t = (1 - t)*x0 + t*noise, t of shape (B,); computed in float32, returned in
    x0's dtype (it is the model's input)."""
    tt = _batch_view(t, x0)
    return ((1 - tt) * x0.float() + tt * noise.float()).to(x0.dtype)


def fm_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching velocity target noise - x0, float32."""
    return noise.float() - x0.float()


def velocity_kl(v: torch.Tensor, v_anchor: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims of (v - v_anchor)^2, (B,) float32: the KL between two step Gaussians
    of equal std up to a time-dependent factor, which both papers' code drops (DiffusionNFT's KL to the
    reference model, AWM's to the reference and to its EMA policy). ``v_anchor`` is treated as given
    (detach it)."""
    return _per_sample_mean((v.float() - v_anchor.float()) ** 2)


def optimality_probability(adv: torch.Tensor, clip: float) -> torch.Tensor:
    """DiffusionNFT's optimality probability r = 1/2 + 1/2*clip(adv/clip, -1, 1), in [0, 1], float32.

    The paper (Sec. 3) maps a raw reward to r = 1/2 + 1/2*clip((R - E[R | c]) / Z_c, -1, 1); its
    released code clamps the group-normalised advantage to [-clip, clip] and divides by clip (5 by
    default), i.e. Z_c = clip * the group's reward std. ``adv`` is that normalised advantage.
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    return 0.5 + 0.5 * torch.clamp(adv.float() / clip, -1.0, 1.0)


def nft_loss(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    target: torch.Tensor,
    r: torch.Tensor,
    beta: float,
    *,
    t: torch.Tensor | None = None,
    weighting: str = "adaptive",
    eps: float = 1e-5,
) -> torch.Tensor:
    """DiffusionNFT's per-sample loss, (B,) float32 (arXiv 2509.16117, Eq. for the NFT objective):

        v+ = (1 - beta)*v_old + beta*v_theta        (implicit positive policy)
        v- = (1 + beta)*v_old - beta*v_theta        (implicit negative policy)
        loss = [ r*L(v+) + (1 - r)*L(v-) ] / beta

    with ``v_old`` the old (EMA) policy's velocity at the same (x_t, t), detached here, and r the
    optimality probability (``optimality_probability``). The branch loss L depends on ``weighting``:

    - "none": L(u) = mean_pixels (u - target)^2, the paper's flow-matching form.
    - "adaptive" (default, the released code's): the error is measured on the x0 prediction,
      x_t - t*u - x0 = -t*(u - target), and self-normalised per sample:
      L(u) = mean_pixels (t*(u - target))^2 / sg(max(mean_pixels |t*(u - target)|, eps)),
      sg = stop-gradient. This is computed from the velocity error (mathematically identical to the
      code's x0-space form; it needs ``t``, shape (B,)).

    The 1/beta factor is the released code's (the paper writes the objective without it): it makes
    the gradient at the old policy independent of beta. At v_theta = v_old both branches equal v_old,
    so the gradient w.r.t. v_theta there is proportional to (2r - 1)*(v_old - target): zero for a
    neutral sample (r = 1/2); for r > 1/2 a descent step moves v_theta towards the target, for
    r < 1/2 away from it. The released code also multiplies the batch mean by its advantage clip (5), a
    constant learning-rate factor not applied here, and adds a separate ``velocity_kl`` to the
    reference model.
    """
    if weighting not in NFT_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {NFT_WEIGHTINGS}, got {weighting!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    v_theta, v_old, target = v_theta.float(), v_old.float().detach(), target.float()
    r = r.float()
    err_pos = (1 - beta) * v_old + beta * v_theta - target
    err_neg = (1 + beta) * v_old - beta * v_theta - target
    if weighting == "none":
        loss_pos, loss_neg = _per_sample_mean(err_pos**2), _per_sample_mean(err_neg**2)
    else:
        if t is None:
            raise ValueError("nft_loss: weighting='adaptive' needs the training times t (B,)")
        tt = _batch_view(t, v_theta)
        loss_pos = _adaptive(tt * err_pos, eps)
        loss_neg = _adaptive(tt * err_neg, eps)
    return (r * loss_pos + (1 - r) * loss_neg) / beta


def _adaptive(x0_err: torch.Tensor, eps: float) -> torch.Tensor:
    scale = _per_sample_mean(x0_err.detach().abs()).clamp(min=eps)
    return _per_sample_mean(x0_err**2) / scale


def awm_log_likelihood(
    v: torch.Tensor,
    target: torch.Tensor,
    t: torch.Tensor | None = None,
    *,
    weighting: str = "uniform",
    ghuber_power: float = 0.25,
) -> torch.Tensor:
    """AWM's surrogate log-likelihood of a clean sample under a policy, (B,) float32: minus a weighted
    flow-matching error, with l = mean_pixels (v - target)^2 (arXiv 2509.25050; the denoising score
    matching loss bounds the log-likelihood, so -l stands in for log p):

    - "uniform": -l                      - "t": -t*l                 - "t2": -t^2*l
    - "ghuber" (the released configs', power p = 0.25): -t*((l + d)^p - d^p)/p with d = 1e-10, a
      generalised Huber loss that grows like l^p and so damps samples with large errors.

    The released code's "huber" is ghuber with p = 1/2 up to a factor 2, so it is not repeated.
    ``t`` (B,) is needed by every weighting but "uniform".
    """
    if weighting not in AWM_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {AWM_WEIGHTINGS}, got {weighting!r}")
    mse = _per_sample_mean((v.float() - target.float()) ** 2)
    if weighting == "uniform":
        return -mse
    if t is None:
        raise ValueError(f"awm_log_likelihood: weighting={weighting!r} needs the training times t (B,)")
    t = torch.as_tensor(t, dtype=torch.float32, device=mse.device).reshape(-1)
    if weighting == "t":
        return -t * mse
    if weighting == "t2":
        return -(t**2) * mse
    if not ghuber_power > 0:
        raise ValueError(f"ghuber_power must be > 0, got {ghuber_power}")
    d = 1e-10
    return -t * ((mse + d) ** ghuber_power - d**ghuber_power) / ghuber_power


def awm_loss(
    v_theta: torch.Tensor,
    target: torch.Tensor,
    adv: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    old_log_lik: torch.Tensor | None = None,
    clip_range: float | None = None,
    adv_clip: float | None = None,
    v_old: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    weighting: str = "uniform",
    ghuber_power: float = 0.25,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage Weighted Matching's per-sample loss, (B,) float32, and detached (B,) statistics.

    AWM (arXiv 2509.25050) weights the flow-matching loss of each generated sample by its advantage,
    as the policy-gradient estimator with the DSM loss in place of the intractable log-likelihood. With
    lp = ``awm_log_likelihood`` (the weighted, negated flow-matching error) and A the advantage:

        A <- clip(A, -c, c) / c                                  (if adv_clip = c; released code: c = 5)
        ratio = exp(lp - old_lp)
        loss = max(-A*ratio, -A*clip(ratio, 1 - eps, 1 + eps)) + kl_beta * velocity_kl(v_theta, v_old)

    ``old_log_lik`` is lp under the policy that drew the samples, at the same (x_t, t) (in the released
    code, with its default on-policy sampling, the weights before this epoch's updates, not the EMA
    policy; DiffusionNFT instead samples with, and contrasts against, its EMA policy); None means the
    on-policy case (old_lp = lp detached: ratio 1, gradient -A*grad(lp) = A*grad(weighted FM loss)),
    so with no clipping and no penalty the loss's gradient is exactly the advantage-weighted
    flow-matching gradient. ``clip_range`` eps None disables clipping (the released configs use 1).
    ``v_old`` is the EMA policy's velocity that the velocity penalty pulls towards (the released code's
    "ema_kl", weight 1, EMA rate min(0.001*step, 0.3)); its KL to the reference model is a separate
    ``velocity_kl`` term the objective may add. A zero-advantage sample gives no policy gradient, and
    at v_theta = v_old no penalty gradient either; for A > 0 a descent step lowers the sample's
    flow-matching error, for A < 0 raises it. The released code works in float64; this in float32.
    """
    lp = awm_log_likelihood(v_theta, target, t, weighting=weighting, ghuber_power=ghuber_power)
    adv = adv.float()
    if adv_clip is not None:
        if not adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0, got {adv_clip}")
        adv = torch.clamp(adv, -adv_clip, adv_clip) / adv_clip
    old = lp.detach() if old_log_lik is None else old_log_lik.float().detach()
    ratio = torch.exp(lp - old)
    policy = -adv * ratio
    if clip_range is not None:
        if not clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {clip_range}")
        policy = torch.maximum(policy, -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range))
        clipped = ((ratio - 1).abs() > clip_range).float()
    else:
        clipped = torch.zeros_like(ratio)
    loss = policy
    kl = torch.zeros_like(lp)
    if kl_beta:
        if v_old is None:
            raise ValueError("awm_loss: kl_beta > 0 needs v_old, the EMA policy's velocity")
        kl = velocity_kl(v_theta, v_old.detach())
        loss = loss + kl_beta * kl
    mse = _per_sample_mean((v_theta.detach().float() - target.float()) ** 2)
    stats = {
        "ratio": ratio.detach(),
        "clipped": clipped,
        "log_lik": lp.detach(),
        "mse": mse,
        "kl": kl.detach(),
        "policy": policy.detach(),
    }
    return loss, stats


def advantage_at_time(adv: torch.Tensor, sigmas: torch.Tensor, t: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """The per-step advantage read at training times t, (B,) float32.

    ``adv`` (B, T) holds the advantage of step i, the step that starts at sigmas[i] (T+1 decreasing
    sigmas; only sigmas[:T] are used), e.g. TCRM's dense per-step values. At a flow-matching training
    time t (B,) the value is the step advantages as a function of sigma, read at sigma = t:

    - "linear": piecewise linear between the steps' start sigmas, A_i + (sigma_i - t)/(sigma_i -
      sigma_(i+1)) * (A_(i+1) - A_i) for sigma_(i+1) <= t <= sigma_i.
    - "nearest": the step whose start sigma is nearest to t (a tie goes to the earlier, noisier step).

    A t above sigmas[0] takes step 0's advantage, below sigmas[T-1] step T-1's (the end steps clamp).
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    if adv.ndim != 2 or sigmas.ndim != 1 or len(sigmas) < adv.shape[1]:
        raise ValueError(
            f"advantage_at_time: adv (B, T) needs >= T sigmas, got {tuple(adv.shape)} and {tuple(sigmas.shape)}"
        )
    adv = adv.float()
    n_steps = adv.shape[1]
    knots = sigmas[:n_steps].float().to(adv.device)
    t = torch.as_tensor(t, dtype=torch.float32, device=adv.device).reshape(-1).expand(adv.shape[0])
    if n_steps == 1:
        return adv[:, 0].clone()
    if mode == "nearest":
        idx = (knots[None, :] - t[:, None]).abs().argmin(dim=1)  # argmin returns the first (noisier) on ties
        return adv.gather(1, idx[:, None])[:, 0]
    asc, adv_asc = knots.flip(0), adv.flip(1)  # increasing sigma for searchsorted
    tc = torch.minimum(torch.maximum(t, asc[0]), asc[-1])
    hi = torch.searchsorted(asc, tc, right=True).clamp(1, n_steps - 1)
    lo = hi - 1
    s_lo, s_hi = asc[lo], asc[hi]
    w = (tc - s_lo) / (s_hi - s_lo)
    a_lo, a_hi = adv_asc.gather(1, lo[:, None])[:, 0], adv_asc.gather(1, hi[:, None])[:, 0]
    return a_lo + w * (a_hi - a_lo)
