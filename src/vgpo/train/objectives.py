"""Objectives: how an epoch's samples and advantages become a loss (one per algorithm family).

An objective turns one micro-batch into a sequence of loss *terms*, each a per-sample loss (B,) whose
sum the trainer back-propagates (divided by the optimizer step's global sample count x
``terms_per_sample``, so batch sizes do not change the update), plus per-sample statistics to log.
The update loop in ``trainer.py`` owns batching, accumulation, clipping and the optimizer; it never
asks which objective it runs, only the properties below.

  ppo  Flow-GRPO (arXiv 2505.05470): PPO-clipped ratio of the recomputed step log-probs of the
       rollout's own transitions, at each trained step, plus an optional KL to the reference policy.
  nft  DiffusionNFT (arXiv 2509.16117): on the rollouts' clean samples noised by the forward process
       (fresh noise, fresh t), the implicit positive and negative policies built from the old and the
       current velocity, weighted by the optimality probability r of the sample's advantage.
  awm  Advantage Weighted Matching (arXiv 2509.25050): the same forward-process samples, the
       flow-matching loss weighted by the advantage, with its clipping/regularisation.

The flow-matching objectives train the conditional velocity (no CFG), need no log-probs, and read the
advantage at their training time t from the per-step advantages (``advantage_at_time``: TCRM's value
at sigma = t; constant without TCRM). With ``beta`` > 0 they add a velocity-space KL to the reference,
beta * mean (v - v_ref)^2, as DiffusionNFT's code does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from vgpo.errors import VgpoError
from vgpo.models import FlowModel
from vgpo.models.protocol import Condition, cat_conditions, slice_condition
from vgpo.sampling import SDEStepOutput, guided_velocity, sde_step
from vgpo.train.fm_losses import (
    advantage_at_time,
    awm_log_likelihood,
    awm_loss,
    fm_interpolate,
    fm_target,
    nft_loss,
    optimality_probability,
    velocity_kl,
)
from vgpo.train.losses import gaussian_kl, ppo_clip_loss
from vgpo.train.old_policy import OldPolicy, swapped_weights
from vgpo.utils import derive_seed

if TYPE_CHECKING:
    from vgpo.train.config import TrainConfig
    from vgpo.train.trainer import EpochBatch


@dataclass
class Term:
    """One loss term of a micro-batch: a loss per row with its graph, statistics per row (detached, averaged over
    all rows of all terms for the log), and |ratio - 1| per row where a ratio exists. A row is a sample (PPO: one
    term per trained step), or a sample at one training point (nft/awm: one term per pass of
    ``fm_points_per_pass`` points, N = points x B rows)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    ratio_dev: torch.Tensor | None = None


@dataclass
class MicroBatch:
    """Samples ``idx`` of the epoch's batch, their conditions and per-step advantages (B, T).
    ``old_is_current``: the weights are still those that drew the rollouts, so this forward's own
    log-probs are the old ones (PPO then stores them in ``UpdateContext.old_log_probs``)."""

    idx: torch.Tensor
    cond: Condition
    uncond: Condition | None
    advantages: torch.Tensor
    old_is_current: bool = False


@dataclass
class UpdateContext:
    """What an objective may read besides its micro-batch. ``sampling_weights``: the trained weights as
    they were when the update began (the weights that drew on-policy rollouts), kept for objectives that
    ask for them (``needs_sampling_weights``)."""

    cfg: TrainConfig
    model: FlowModel
    batch: EpochBatch
    epoch: int
    inner: int
    old_policy: OldPolicy | None
    sampling_weights: list[torch.Tensor] | None = None
    old_log_probs: torch.Tensor | None = None  # (B, T) PPO's old log-probs: the rollout's, or recomputed


class Objective:
    """What the trainer asks an objective. Subclasses register themselves by ``name``."""

    name: ClassVar[str]
    needs_log_probs: ClassVar[bool]  # trains stochastic rollout steps (refused on ODE rollouts)
    uses_old_policy: ClassVar[bool] = False  # keeps a lagged weight copy (old_policy.py)
    samples_with_old_policy: ClassVar[bool] = False  # rollouts are drawn with that copy
    needs_sampling_weights: ClassVar[bool] = False  # reads the weights the update began with
    stats: ClassVar[tuple[str, ...]]  # the per-sample statistics its terms carry, logged as losses/<name>

    def terms_per_sample(self, cfg: TrainConfig) -> int:
        raise NotImplementedError

    def terms(self, ctx: UpdateContext, mb: MicroBatch) -> Iterator[Term]:
        raise NotImplementedError

    def log_probs(self, ctx: UpdateContext, mb: MicroBatch) -> torch.Tensor:
        """(B, trained steps) the current weights' log-probs of the rollout's transitions, as ``terms``
        computes them (objectives that ``needs_log_probs``)."""
        raise NotImplementedError


class PPO(Objective):
    """Flow-GRPO's update: at each trained step j, the PPO-clipped ratio of the rollout transition's
    recomputed log-prob (guided velocity, the unconditional branch detached unless ``cfg_uncond_grad``),
    plus beta * the closed-form KL of the step Gaussians to the reference policy."""

    name = "ppo"
    needs_log_probs = True
    stats = ("policy", "kl", "clipfrac", "approx_kl")

    def terms_per_sample(self, cfg: TrainConfig) -> int:
        return cfg.trained_steps

    def _step(self, ctx: UpdateContext, mb: MicroBatch, j: int) -> SDEStepOutput:
        cfg, traj = ctx.cfg, ctx.batch.traj
        x, prev = traj.states[mb.idx, j], traj.states[mb.idx, j + 1]
        v = guided_velocity(
            ctx.model, x, traj.sigmas[j], mb.cond, mb.uncond, cfg.guidance_scale, detach_uncond=not cfg.cfg_uncond_grad
        )
        return sde_step(x, v, traj.sigmas, j, cfg.noise_level, prev_sample=prev, sde_type=cfg.parts.sampler)

    def log_probs(self, ctx: UpdateContext, mb: MicroBatch) -> torch.Tensor:
        return torch.stack([self._step(ctx, mb, j).log_prob for j in range(ctx.cfg.trained_steps)], dim=1)

    def terms(self, ctx: UpdateContext, mb: MicroBatch) -> Iterator[Term]:
        cfg, traj, idx = ctx.cfg, ctx.batch.traj, mb.idx
        old_log_probs = traj.log_probs if ctx.old_log_probs is None else ctx.old_log_probs
        for j in range(cfg.trained_steps):
            out = self._step(ctx, mb, j)
            if mb.old_is_current:  # the same bits a no-grad pass before the update would give, without the pass
                old_log_probs[idx, j] = out.log_prob.detach()
            old = old_log_probs[idx, j]
            policy, ratio = ppo_clip_loss(out.log_prob, old, mb.advantages[:, j], cfg.clip_range)
            loss = policy
            stats = {}
            if cfg.beta > 0:
                with torch.no_grad(), ctx.model.reference():
                    ref_mean = self._step(ctx, mb, j).mean
                kl = gaussian_kl(out.mean, ref_mean, out.std)
                loss = loss + cfg.beta * kl
                stats["kl"] = kl.detach()
            with torch.no_grad():
                log_ratio = out.log_prob - old
                stats.update(
                    policy=policy.detach(),
                    clipfrac=((ratio - 1).abs() > cfg.clip_range).float(),
                    approx_kl=0.5 * log_ratio**2,
                )
                ratio_dev = (ratio - 1).abs()
            yield Term(loss, stats, ratio_dev)


def resolve_old_log_probs(mode: str, model: FlowModel) -> str:
    """``cfg.old_log_probs`` with ``auto`` resolved: ``recompute`` where the network computes below float32.
    Reduced-precision kernels may round a sample differently at another batch size (oneDNN's bf16 on an
    AMX CPU: |ratio - 1| up to 1e-3 at the first step, rollout batch 8 against update batch 2), while in
    float32 the rollout's log-probs agree with the update's to ~1e-7 and a recompute would only cost."""
    if mode == "auto":
        return "recompute" if model.compute_dtype != torch.float32 else "rollout"
    return mode


def training_times(
    cfg: TrainConfig,
    sigmas: torch.Tensor,
    sample_ids: torch.Tensor,
    epoch: int,
    inner: int,
    latent_shape: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow-matching objectives' training points of each sample: times t (B, K) and noises
    (B, K, *latent), float32 on the CPU. Each sample's draws come from its own generator, seeded by
    (seed, epoch, inner epoch, global sample id), so they do not depend on batch sizes or processes.

    ``fm_timesteps`` 0: t = the sigmas of the trained rollout steps, each once (DiffusionNFT trains on the
    sampler's timesteps); K > 0: K draws uniform in [sigmas[n], sigmas[0]], n = the trained steps."""
    n = cfg.trained_steps
    k = cfg.fm_timesteps or n
    lo, hi = float(sigmas[n]), float(sigmas[0])
    times, noises = [], []
    for sid in sample_ids.tolist():
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "fm", inner, int(sid)))
        if cfg.fm_timesteps:
            times.append(lo + (hi - lo) * torch.rand(k, generator=gen))
        else:
            times.append(sigmas[:n].detach().float().cpu().clone())
        noises.append(torch.randn((k, *latent_shape), generator=gen))
    return torch.stack(times), torch.stack(noises)


class FlowMatchingObjective(Objective):
    """Shared by nft and awm: K forward-process points per sample, the current conditional velocity
    with gradient, the anchor policies' velocities without (each policy's K under one weight swap), and
    the advantage at each t. ``anchors``: which no-grad velocities ``loss`` receives, by name: "old"
    (the lagged copy) and/or "sampling" (the weights the update began with)."""

    needs_log_probs = False
    uses_old_policy = True
    anchors: ClassVar[tuple[str, ...]] = ("old",)

    def terms_per_sample(self, cfg: TrainConfig) -> int:
        return cfg.fm_timesteps or cfg.trained_steps

    def loss(
        self,
        ctx: UpdateContext,
        v: torch.Tensor,
        anchors: dict[str, torch.Tensor],
        target: torch.Tensor,
        adv: torch.Tensor,
        t: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        raise NotImplementedError

    def _weights(self, ctx: UpdateContext, name: str):
        if name == "old" and ctx.old_policy is not None:
            return ctx.old_policy.active()
        if name == "sampling" and ctx.sampling_weights is not None:
            return swapped_weights(ctx.model.trainable_parameters(), ctx.sampling_weights)
        raise VgpoError(f"objective: {self.name} needs the {name} policy's weights, which the trainer did not keep")

    def terms(self, ctx: UpdateContext, mb: MicroBatch) -> Iterator[Term]:
        cfg, model, batch = ctx.cfg, ctx.model, ctx.batch
        sigmas = batch.traj.sigmas
        x0 = batch.traj.final[mb.idx].float()
        times, noises = training_times(cfg, sigmas, batch.sample_ids[mb.idx], ctx.epoch, ctx.inner, tuple(x0.shape[1:]))
        times, noises = times.to(x0.device), noises.to(x0.device)
        k_points = times.shape[1]
        # The K points of the B samples stacked point-major (row k*B + b: sample b at its k-th time), so that a
        # pass takes any run of points as one slice.
        xt = torch.cat([fm_interpolate(x0, noises[:, k], times[:, k]) for k in range(k_points)])
        xt = xt.to(batch.traj.states.dtype)
        t = times.T.reshape(-1)
        cond = cat_conditions(*[mb.cond] * k_points)
        target = torch.cat([fm_target(x0, noises[:, k]) for k in range(k_points)])
        adv = advantage_at_time(mb.advantages.repeat(k_points, 1), sigmas.to(t.device), t, cfg.fm_advantage_interp)
        # Each anchor policy's velocities in one pass of K x B samples: bit-identical to K passes where the kernels
        # round a sample alike at any batch size (float32; bf16 off AMX, docs/speed.md), and cheaper.
        anchors: dict[str, torch.Tensor] = {}
        for name in self.anchors:
            with torch.no_grad(), self._weights(ctx, name), model.fixed_weights():
                anchors[name] = model.velocity(xt, t, cond).float()
        n = len(mb.idx)
        for first in range(0, k_points, cfg.fm_points_per_pass):
            rows = slice(first * n, min(first + cfg.fm_points_per_pass, k_points) * n)
            cond_rows = slice_condition(cond, rows)
            v = model.velocity(xt[rows], t[rows], cond_rows).float()
            pass_anchors = {name: a[rows] for name, a in anchors.items()}
            loss, stats, ratio_dev = self.loss(ctx, v, pass_anchors, target[rows], adv[rows], t[rows])
            if cfg.beta > 0:
                with torch.no_grad(), model.reference():
                    v_ref = model.velocity(xt[rows], t[rows], cond_rows).float()
                kl = velocity_kl(v, v_ref)
                loss = loss + cfg.beta * kl
                stats["kl"] = kl
            stats["old_dev"] = velocity_kl(v.detach(), pass_anchors["old"])
            yield Term(loss, {name: value.detach() for name, value in stats.items()}, ratio_dev)


class NFT(FlowMatchingObjective):
    """DiffusionNFT: r = optimality probability of the advantage (0.5 + 0.5*clamp(A/adv_clip_max, -1, 1));
    loss = [r * L(positive policy) + (1 - r) * L(negative policy)] / beta with ``nft_beta`` and the
    branch loss ``nft_weighting`` (fm_losses.nft_loss)."""

    name = "nft"
    samples_with_old_policy = True  # DiffusionNFT samples with, and contrasts against, its old policy
    stats = ("policy", "kl", "r", "old_dev")

    def loss(self, ctx, v, anchors, target, adv, t):
        cfg = ctx.cfg
        r = optimality_probability(adv, cfg.adv_clip_max)
        loss = nft_loss(v, anchors["old"], target, r, cfg.nft_beta, t=t, weighting=cfg.nft_weighting)
        return loss, {"policy": loss, "r": r}, None


class AWM(FlowMatchingObjective):
    """Advantage Weighted Matching: the advantage-weighted surrogate log-likelihood (the ``awm_weighting`` of
    the flow-matching error) in a PPO ratio to that of the policy that drew the samples (on-policy: the
    weights the update began with), clipped at ``awm_clip_range``, plus ``awm_old_kl`` * the velocity
    penalty towards the lagged (EMA) old policy, as AWM's released code (fm_losses.awm_loss)."""

    name = "awm"
    needs_sampling_weights = True
    anchors = ("sampling", "old")
    stats = ("policy", "kl", "old_kl", "clipfrac", "mse", "old_dev")

    def loss(self, ctx, v, anchors, target, adv, t):
        cfg = ctx.cfg
        old_lp = awm_log_likelihood(
            anchors["sampling"], target, t, weighting=cfg.awm_weighting, ghuber_power=cfg.awm_ghuber_power
        )
        loss, raw = awm_loss(
            v,
            target,
            adv,
            t=t,
            old_log_lik=old_lp,
            clip_range=cfg.awm_clip_range or None,
            adv_clip=cfg.adv_clip_max,
            v_old=anchors["old"],
            kl_beta=cfg.awm_old_kl,
            weighting=cfg.awm_weighting,
            ghuber_power=cfg.awm_ghuber_power,
        )
        stats = {"policy": raw["policy"], "old_kl": raw["kl"], "clipfrac": raw["clipped"], "mse": raw["mse"]}
        return loss, stats, (raw["ratio"] - 1).abs()


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (PPO(), NFT(), AWM())}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise VgpoError(f"objective: unknown {name!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
