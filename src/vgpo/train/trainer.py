"""One trainer for every algorithm, model and world (read top to bottom).

Each epoch: draw prompts, sample G images per prompt with the configured sampler (keeping states,
log-probs and the one-step projections; with the old policy's weights for nft/awm), score them, turn
rewards into per-step advantages (``advantages.py``), then minimise the configured objective
(``objectives.py``: ppo, nft or awm), optionally with a KL to the reference policy. Which parts run is
resolved once (``algorithms.py``); this loop never asks an algorithm's name. Everything random is a function of
(seed, epoch, sample index), so a resumed run ends bit-identical to an uninterrupted one on CPU and
results do not depend on batch sizes or the number of processes.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from vgpo import distributed as dist
from vgpo.errors import VgpoError
from vgpo.evaluate import evaluate_world
from vgpo.images import save_grid
from vgpo.models import FlowModel, load_model
from vgpo.rewards import Reward
from vgpo.rewards import build as build_reward
from vgpo.rewards import checked as checked_reward
from vgpo.sampling import Trajectory, rollout
from vgpo.sampling.step import batch_randn
from vgpo.train.advantages import (
    group_mean_std,
    grpo_advantages,
    interpolate_steps,
    reward_to_go,
    scored_steps,
    vgpo_advantages,
    zero_std_groups,
)
from vgpo.train.algorithms import describe
from vgpo.train.config import TrainConfig
from vgpo.train.guards import check_update
from vgpo.train.objectives import MicroBatch, UpdateContext, get_objective, resolve_old_log_probs
from vgpo.train.old_policy import OldPolicy, swapped_weights
from vgpo.train.run_folder import (  # noqa: F401 (re-exported)
    MetricsLog,
    TrainingState,
    gather_training_state,
    load_ema,
    load_extra,
    load_optimizer,
    load_trained_model,
    load_weights,
    plot_rewards,
    plot_run,
    prepare,
    save_checkpoint,
    save_eval,
    write_config,
)
from vgpo.utils import derive_seed
from vgpo.worlds import World, balanced_choice, get_world


# --------------------------------------------------------------------------------------------------
# Sampling and scoring
# --------------------------------------------------------------------------------------------------
@dataclass
class EpochBatch:
    """This process's samples of one epoch. B = local prompts x G."""

    metadata: list[dict]
    group_ids: torch.Tensor  # (B,) global prompt index within the epoch
    sample_ids: torch.Tensor  # (B,) global sample index within the epoch
    traj: Trajectory
    images: torch.Tensor  # (B, 3, H, W) decoded final samples, CPU


def _generators(
    cfg: TrainConfig, epoch: int, ids: torch.Tensor, device: torch.device, *salt: str
) -> list[torch.Generator]:
    # One generator per id (global sample or group index), seeded by (seed, epoch, *salt, id).
    return [torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, epoch, *salt, int(i))) for i in ids]


def draw_prompts(cfg: TrainConfig, prompts: list[dict], epoch: int) -> list[int]:
    """The epoch's prompt indices, tag-balanced (all processes draw the same list, then take their share)."""
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "prompts"))
    return balanced_choice(prompts, cfg.prompts_per_epoch, gen)


@torch.no_grad()
def sample_epoch(
    cfg: TrainConfig, model: FlowModel, prompts: list[dict], epoch: int, sigmas: torch.Tensor
) -> EpochBatch:
    chosen = draw_prompts(cfg, prompts, epoch)
    per_rank = cfg.prompts_per_epoch // dist.world_size()
    local = range(dist.rank() * per_rank, (dist.rank() + 1) * per_rank)
    group_ids = torch.tensor([g for g in local for _ in range(cfg.group_size)])
    sample_ids = torch.tensor([g * cfg.group_size + k for g in local for k in range(cfg.group_size)])
    metadata = [prompts[chosen[g]] for g in group_ids.tolist()]
    sde_type = "sde" if cfg.parts.sampler == "ode" else cfg.parts.sampler  # (ode: every noise level is 0)
    trajs, images = [], []
    with model.fixed_weights():  # the weights that sample stay fixed through the rollout
        for start in range(0, len(metadata), cfg.sample_batch_size):
            part = slice(start, start + cfg.sample_batch_size)
            texts = [m["prompt"] for m in metadata[part]]
            cond = model.encode_prompts(texts)
            gens = _generators(cfg, epoch, sample_ids[part], model.device)
            x_init = None
            if cfg.shared_init_noise:  # one draw per group, seeded by (seed, epoch, group): the same on every process
                x_init = batch_randn(
                    (len(texts), *model.latent_shape),
                    _generators(cfg, epoch, group_ids[part], model.device, "init"),
                    model.device,
                )
            traj = rollout(
                model,
                cond,
                model.negative_condition(len(texts)),
                sigmas,
                cfg.noise_levels,
                cfg.guidance_scale,
                generator=gens,
                x_init=x_init,
                sde_type=sde_type,
            )
            trajs.append(traj)
            images.append(model.decode(traj.final).cpu())
    traj = Trajectory(
        sigmas=sigmas,
        states=torch.cat([t.states for t in trajs]),
        log_probs=torch.cat([t.log_probs for t in trajs]),
        x0_hat=torch.cat([t.x0_hat for t in trajs]),
    )
    return EpochBatch(metadata, group_ids, sample_ids, traj, torch.cat(images))


@dataclass
class Scores:
    final: torch.Tensor  # (B,) terminal reward
    values: torch.Tensor  # (B, T) Q_i (terminal reward at every step without TCRM)
    images_scored: int
    components: dict[str, torch.Tensor]


@torch.no_grad()
def score_epoch(cfg: TrainConfig, model: FlowModel, reward_fn: Reward, batch: EpochBatch) -> Scores:
    """Terminal rewards, and with TCRM the instant rewards of the projections, in one reward call.

    TCRM instant reward (our reading of the paper): action i moves x_i to x_(i+1); its reward is that
    of the projection of the state it produced, predict_x0(x_(i+1), v_(i+1), sigma_(i+1)), which the
    rollout already computed as x0_hat[:, i+1]; the last action's reward is the final image's."""
    B, T = batch.traj.log_probs.shape
    prompts = [m["prompt"] for m in batch.metadata]
    if not cfg.dense_rewards:
        final = reward_fn(batch.images, prompts, batch.metadata).float()
        return Scores(final, final[:, None].expand(B, T).contiguous(), B, _components(reward_fn))
    steps = scored_steps(T, cfg.tcrm_every)
    projections = [model.decode(batch.traj.x0_hat[:, i + 1]).cpu() for i in steps if i < T - 1]
    images = torch.cat([batch.images, *projections])
    rewards = reward_fn(images, prompts * (len(projections) + 1), batch.metadata * (len(projections) + 1)).float()
    final = rewards[:B]
    at_scored = torch.cat([rewards[B:].view(len(projections), B).T, final[:, None]], dim=1)
    instant = interpolate_steps(at_scored, steps, T)
    components = {k: v[:B] for k, v in _components(reward_fn).items()}
    return Scores(final, reward_to_go(instant, cfg.gamma), images.shape[0], components)


def _components(reward_fn: Reward) -> dict[str, torch.Tensor]:
    return dict(getattr(reward_fn, "last_components", {}))  # a weighted reward's terms


def compute_advantages(
    cfg: TrainConfig, final: torch.Tensor, values: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) advantages and step weights omega of the configured advantage parts (see advantages.py):
    group normalisation of the final reward, or with TCRM and/or ADAE the VGPO advantage of the values."""
    T = values.shape[1]
    if not (cfg.dense_rewards or cfg.absolute_signal):
        adv = grpo_advantages(final, group_ids, T, cfg.global_std)
        omega = torch.ones_like(adv)
    else:
        adv, omega = vgpo_advantages(
            values,
            group_ids,
            use_omega=cfg.dense_rewards,
            adae_k=cfg.adae_k if cfg.absolute_signal else 0.0,
            adae_steps=cfg.adae_steps,
            global_std=cfg.global_std,
        )
    return adv.clamp(-cfg.adv_clip_max, cfg.adv_clip_max), omega


# --------------------------------------------------------------------------------------------------
# Update
# --------------------------------------------------------------------------------------------------
@dataclass
class UpdateStats:
    losses: dict[str, float] = field(default_factory=dict)  # the objective's statistics, averaged over its terms
    ratio_dev_first: float = 0.0  # max |r - 1| on the first inner epoch's first optimizer step
    # With recomputed old log-probs: max |exp(recomputed - rollout's) - 1|, the first ratio's error without them.
    rollout_ratio_dev: float | None = None
    grad_norm: float = 0.0
    fwd_bwd_s: float = 0.0
    optimizer_steps: int = 0


def update(
    cfg: TrainConfig,
    model: FlowModel,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    ema: list[torch.Tensor] | None,
    batch: EpochBatch,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    epoch: int,
    old_policy: OldPolicy | None = None,
) -> UpdateStats:
    """Gradient steps of the configured objective (objectives.py) over this process's kept samples.

    An optimizer step takes ``train_batch_size x gradient_accumulation`` samples per process; its loss
    is the sum of the objective's per-(sample, term) losses divided by the step's global sample count x
    the objective's terms per sample, so batch 8 x accumulation 1 and batch 2 x accumulation 4 give the
    same update."""
    objective = get_objective(cfg.parts.objective)
    n_per_sample = objective.terms_per_sample(cfg)
    stats, n_terms = UpdateStats(), 0
    sums = {name: 0.0 for name in objective.stats}
    local = keep.nonzero().flatten()
    per_step = cfg.train_batch_size * cfg.gradient_accumulation
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, "order", dist.rank()))
    texts = [m["prompt"] for m in batch.metadata]
    sharded = any(dist.is_sharded(p) for p in params)
    sampling_weights = [p.detach().clone() for p in params] if objective.needs_sampling_weights else None
    orders = [local[torch.randperm(len(local), generator=gen)] for _ in range(cfg.inner_epochs)]
    n_opt_steps = dist.all_reduce_max(math.ceil(len(local) / per_step))

    def micro_batches(inner: int, s: int) -> list[tuple[torch.Tensor, float]]:
        """Optimizer step s's micro-batches (sample indices, loss weight). FSDP's collectives need the same
        number of passes on every process, so a process short of samples pads with weight-0 no-ops."""
        block = orders[inner][s * per_step : (s + 1) * per_step]
        # (an empty block still splits into one empty tensor: a process may have no kept sample left)
        parts = [(mb, 1.0) for mb in block.split(cfg.train_batch_size) if len(mb)]
        if sharded:
            parts += [(torch.zeros(1, dtype=torch.long), 0.0)] * (dist.all_reduce_max(len(parts)) - len(parts))
        return parts

    def micro_batch(mb: torch.Tensor, old_is_current: bool = False) -> MicroBatch:
        cond = model.encode_prompts([texts[i] for i in mb])
        return MicroBatch(mb, cond, model.negative_condition(len(mb)), advantages[mb], old_is_current)

    # PPO's old log-probs in the update's own micro-batches (cfg.old_log_probs): the first optimizer step's
    # forward passes give them for its samples; one no-grad pass, before any weight changes, for the rest.
    recompute = objective.needs_log_probs and resolve_old_log_probs(cfg.old_log_probs, model) == "recompute"
    old_log_probs = batch.traj.log_probs.clone() if recompute else None
    if recompute:
        ctx = UpdateContext(cfg, model, batch, epoch, 0, old_policy, sampling_weights, old_log_probs)
        started = time.perf_counter()
        with torch.no_grad():
            for s in range(1, n_opt_steps):
                for mb, weight in micro_batches(0, s):
                    log_probs = objective.log_probs(ctx, micro_batch(mb))
                    if weight:
                        old_log_probs[mb, : log_probs.shape[1]] = log_probs
        stats.fwd_bwd_s += time.perf_counter() - started
    for inner in range(cfg.inner_epochs):
        ctx = UpdateContext(cfg, model, batch, epoch, inner, old_policy, sampling_weights, old_log_probs)
        for s in range(n_opt_steps):
            parts = micro_batches(inner, s)
            n_samples = sum(len(mb) for mb, weight in parts if weight)
            denom = dist.all_reduce_sum_(torch.tensor([float(n_samples)])).item() * n_per_sample
            for mb, weight in parts:
                terms = objective.terms(ctx, micro_batch(mb, recompute and inner == 0 and s == 0 and weight > 0))
                while True:
                    started = time.perf_counter()
                    term = next(terms, None)
                    if term is None:
                        break
                    (weight * term.loss.sum() / denom).backward()
                    stats.fwd_bwd_s += time.perf_counter() - started
                    if not weight:
                        continue
                    for name in sums.keys() & term.stats.keys():
                        sums[name] += term.stats[name].sum().item()
                    if term.ratio_dev is not None and inner == 0 and s == 0:
                        stats.ratio_dev_first = max(stats.ratio_dev_first, term.ratio_dev.max().item())
                    n_terms += term.loss.numel()  # samples x the points this term holds
            dist.sum_gradients_(params)
            stats.grad_norm = float(dist.full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
            check_update(epoch, stats.grad_norm, sums)  # a non-finite step must never reach the weights
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.optimizer_steps += 1
            if ema is not None:
                with torch.no_grad():
                    for e, p in zip(ema, params):
                        e.lerp_(p.detach(), 1.0 - cfg.ema_decay)
    # Averages over every process's terms, so the logged losses do not depend on the number of processes.
    totals = dist.all_reduce_sum_(torch.tensor([*sums.values(), float(n_terms)], dtype=torch.float64)).tolist()
    stats.losses = {key: value / max(1.0, totals[-1]) for key, value in zip(sums, totals)}
    stats.ratio_dev_first = dist.all_reduce_max(stats.ratio_dev_first)
    if old_log_probs is not None:
        n = cfg.trained_steps
        dev = (old_log_probs[local, :n] - batch.traj.log_probs[local, :n]).exp().sub(1).abs()
        stats.rollout_ratio_dev = dist.all_reduce_max(dev.max().item() if dev.numel() else 0.0)
    return stats


@contextmanager
def ema_weights(params: list[torch.nn.Parameter], ema: list[torch.Tensor] | None) -> Iterator[None]:
    """Temporarily load the EMA weights (evaluation), restoring the trained ones after."""
    with swapped_weights(params, ema) if ema is not None else nullcontext():
        yield


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
def run_eval(
    cfg: TrainConfig, model: FlowModel, world: World, test_prompts: list[dict], out: Path, tag: str, reward_fn: Reward
) -> dict:
    result = evaluate_world(
        model,
        world,
        test_prompts,
        num_steps=cfg.eval_num_steps,
        guidance_scale=cfg.eval_guidance,
        images_per_prompt=cfg.eval_images_per_prompt,
        seed=cfg.seed,
        batch_size=cfg.eval_batch_size,
    )
    # The training reward on the held-out images too (Flow-GRPO's eval_reward): the only held-out score of
    # worlds without a judge of their own (the prompt-file worlds: geneval, ocr, pickscore).
    held_out = reward_fn(result.images, [m["prompt"] for m in result.metadata], result.metadata).float()
    result.metrics["reward/mean"] = held_out.mean().item()
    if not dist.is_main():  # an FSDP process that took part in the sampling
        return result.metrics
    n = min(48, len(result.metadata))
    folder = save_eval(out, tag, result.metrics)
    save_grid(result.images[:n], [m["prompt"] for m in result.metadata[:n]], folder / f"{tag}.png")
    return result.metrics


@dataclass
class TrainHooks:
    """Public callbacks into the training loop (benchmarks and tests use these, not the trainer's internals).

    on_advantages(epoch, advantages, omega) -> (advantages, omega): called every epoch with the whole
    epoch's (all processes') clipped (B, T) advantages and step weights, before samples are dropped
    or trained; what it returns is trained. Under several processes it runs on each and must return
    the same on all (derive any randomness from the epoch)."""

    on_advantages: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, hooks: TrainHooks | None = None) -> Path:
    """Run (or with ``resume`` continue) a training run in ``cfg.out``; ``overwrite`` replaces a run already
    there (refused otherwise); ``hooks`` are the public callbacks. Returns the run folder."""
    out = prepare(cfg, resume, overwrite)
    device = dist.init_from_env(cfg.device)  # "cuda" -> this process's GPU (LOCAL_RANK) under torchrun
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.prompts_per_epoch % dist.world_size():
        raise VgpoError(f"prompts_per_epoch: {cfg.prompts_per_epoch} is not divisible by {dist.world_size()} processes")
    world = get_world(cfg.world)
    train_prompts = world.load_prompts(Path(cfg.train_prompts) if cfg.train_prompts else world.train_file)
    test_prompts = world.load_prompts(Path(cfg.test_prompts) if cfg.test_prompts else world.test_file)
    if cfg.eval_limit:
        test_prompts = test_prompts[: cfg.eval_limit]
    reward_fn = checked_reward(build_reward(cfg.reward_spec(world.reward)), cfg.reward_spec(world.reward))
    # Adapters draw their LoRA init from the global RNG: seed it, so that a run (and its resumed twin) is a
    # function of cfg.seed, and copy rank 0's trainable weights to every process (as DDP does).
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = load_model(cfg.model, cfg.checkpoint, cfg.model_options, device)
    dist.broadcast_(model.trainable_parameters())
    start = load_weights(out, model) if resume else 0
    # FSDP: every forward pass is then a collective, so every process runs every one (evaluation included).
    sharded = cfg.fsdp and dist.world_size() > 1
    if sharded:
        dist.shard_model(*model.fsdp_units())
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    # nft/awm: the lagged weight copy that anchors the loss (and samples nft's rollouts; old_policy.py).
    objective = get_objective(cfg.parts.objective)
    old_policy = OldPolicy(params) if objective.uses_old_policy else None
    if resume:
        load_optimizer(out, optimizer, params)
        if ema is not None:
            load_ema(out, ema)
        if old_policy is not None:
            old_policy.load_state(*load_extra(out, "old_policy"))
    hooks = hooks or TrainHooks()
    if dist.is_main():
        write_config(out, cfg)
    log = MetricsLog(out, start) if dist.is_main() else None
    sigmas = model.schedule(cfg.num_steps)
    if start == 0 and cfg.eval_base and (dist.is_main() or sharded):  # every run reports its starting point
        base_evals = run_eval(cfg, model, world, test_prompts, out, "epoch_0000", reward_fn)
        if dist.is_main():
            log.write(0, {f"eval/{k}": v for k, v in base_evals.items()})
    bar = tqdm(
        range(start, cfg.epochs),
        initial=start,
        total=cfg.epochs,
        desc=f"train {describe(cfg.parts)}",
        dynamic_ncols=True,
        disable=not dist.is_main(),
    )
    for epoch in bar:
        reward_fn.epoch = epoch + 1  # named by the reward checks
        t0 = time.perf_counter()
        with old_policy.active() if objective.samples_with_old_policy else nullcontext():
            batch = sample_epoch(cfg, model, train_prompts, epoch, sigmas)
        t1 = time.perf_counter()
        scores = score_epoch(cfg, model, reward_fn, batch)
        t2 = time.perf_counter()
        # Statistics on the whole epoch (all processes): every group is complete on one process.
        all_final = dist.all_gather_cat(scores.final)
        all_values = dist.all_gather_cat(scores.values)
        all_groups = dist.all_gather_cat(batch.group_ids)
        adv_all, omega_all = compute_advantages(cfg, all_final, all_values, all_groups)
        if hooks.on_advantages is not None:
            adv_all, omega_all = hooks.on_advantages(epoch, adv_all, omega_all)
        zero_std_all = zero_std_groups(all_final, all_groups)
        keep_all = ~zero_std_all if cfg.drops_zero_std else torch.ones_like(zero_std_all)
        mine = slice(dist.rank() * len(batch.metadata), (dist.rank() + 1) * len(batch.metadata))
        # (rewards and advantages live on the CPU; the trajectories on the model's device)
        advantages, keep = adv_all[mine].to(model.device), keep_all[mine]
        t3 = time.perf_counter()
        stats = update(cfg, model, params, optimizer, ema, batch, advantages, keep, epoch, old_policy)
        old_decay = None
        if old_policy is not None:
            old_decay = old_policy.step(
                stats.optimizer_steps, cfg.old_policy_decay_rate, cfg.old_policy_decay_max, cfg.old_policy_decay_flat
            )
        t4 = time.perf_counter()

        n_samples = len(all_final)
        metrics = {
            "reward/mean": all_final.mean().item(),
            "reward/std": all_final.std(unbiased=False).item(),
            "reward/group_std": group_mean_std(all_final, all_groups)[1].mean().item(),
            "reward/zero_std_frac": zero_std_all.float().mean().item(),
            "adv/abs_mean": adv_all[keep_all].abs().mean().item() if keep_all.any() else 0.0,
            "adv/kept_frac": keep_all.float().mean().item(),
            **{f"losses/{k}": v for k, v in stats.losses.items()},
            "losses/ratio_dev_first": stats.ratio_dev_first,
            **({} if stats.rollout_ratio_dev is None else {"losses/rollout_ratio_dev": stats.rollout_ratio_dev}),
            "losses/grad_norm": stats.grad_norm,
            "charts/samples_per_s": n_samples / (t4 - t0),
            "charts/optimizer_steps": stats.optimizer_steps,
            "perf/reward_images": scores.images_scored,
            "time/rollout_s": t1 - t0,
            "time/reward_s": t2 - t1,
            "time/advantage_s": t3 - t2,
            "time/update_s": t4 - t3,
            "time/fwd_bwd_s": stats.fwd_bwd_s,
            "time/epoch_s": t4 - t0,
            "perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # Trainable elements held by rank 0 (a shard of them under FSDP).
            "perf/trainable_params_local": sum(dist.local_numel(p) for p in params),
        }
        if old_decay is not None:
            metrics["charts/old_policy_decay"] = old_decay
        for name, values in scores.components.items():
            metrics[f"reward/{name}"] = dist.all_gather_cat(values).mean().item()
        if cfg.dense_rewards:
            q_mean, omega_mean = all_values.mean(0), omega_all.mean(0)
            for i in range(all_values.shape[1]):
                metrics[f"tcrm/q_{i}"] = q_mean[i].item()
                metrics[f"tcrm/omega_{i}"] = omega_mean[i].item()
        done = epoch + 1
        if (dist.is_main() or sharded) and (done == cfg.epochs or (cfg.eval_every and done % cfg.eval_every == 0)):
            with ema_weights(params, ema):
                evals = run_eval(cfg, model, world, test_prompts, out, f"epoch_{done:04d}", reward_fn)
            metrics.update({f"eval/{k}": v for k, v in evals.items()})
        if dist.is_main():
            log.write(done, metrics)
        if done % cfg.save_every == 0 or done == cfg.epochs:
            extra = {"old_policy": old_policy.state()} if old_policy is not None and (dist.is_main() or sharded) else {}
            state = gather_training_state(model, optimizer, ema, extra) if (dist.is_main() or sharded) else None
            if dist.is_main():
                save_checkpoint(out, state, done, cfg)
        dist.barrier()
        headline = f"eval/{world.headline}"
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.3f}",
            **({"eval": f"{metrics[headline]:.3f}"} if headline in metrics else {}),
        )
    if dist.is_main():
        log.close()
        plot_run(out, f"eval/{world.headline}")
    dist.teardown()
    return out
