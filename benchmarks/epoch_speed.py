"""Seconds per training epoch on a world's presets, per phase (rollout, reward, advantage, update, and a
held-out evaluation), with the network's achieved GFLOP/s against the CPU's peak; variants (algorithm x
precision) run side by side in one process, one epoch of each in turn, so a busy machine slows all alike.

    python benchmarks/epoch_speed.py [--world shapes|text] [--algorithms vgpo] [--precision fp32 bf16]
        [--epochs 4] [--eval-prompts 16] [--threads 2] [--clock-ghz 3.9] [--out DIR]

Each variant is ``configs/<world>-<algo>.yaml`` from the shipped base with ``model_options.precision``
set, its own model, optimizer and EMA; epoch e draws the same prompts and noise in every variant. The
phases are the trainer's own functions (``sample_epoch``, ``score_epoch``, ``compute_advantages``,
``update``) and ``evaluate_world`` on the first ``--eval-prompts`` test prompts (one image each, the
preset's eval steps and CFG). The first epoch is a warm-up: it is not timed but counted, under
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; 2 flops per
multiply-add), giving FLOPs per rollout sample, per kept update sample and per evaluation image.
Reported: median seconds over the timed epochs (min-max), samples/s, GFLOP/s, and that as a share of
the theoretical peak (``vgpo.perf.cpu_peak``: cores x clock x flops/cycle) and of a measured ceiling
(a 2048^3 matmul in the same precision). ``--algorithms grpo grpo-keep vgpo`` compares algorithms as
well (``grpo-keep``: GRPO without dropping zero-std groups, the same update work as VGPO);
``--tcrm-every 1 2 5`` adds VGPO variants scoring every k-th projection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgpo import distributed as dist
from vgpo.config import from_dict, load_yaml
from vgpo.evaluate import evaluate_world
from vgpo.models import load_model
from vgpo.perf import count_flops, cpu_peak, matmul_ceiling
from vgpo.rewards import build as build_reward
from vgpo.train import TrainConfig
from vgpo.train.advantages import zero_std_groups
from vgpo.train.objectives import get_objective
from vgpo.train.old_policy import OldPolicy
from vgpo.train.trainer import compute_advantages, sample_epoch, score_epoch, update
from vgpo.worlds import get_world

PHASES = ("rollout", "reward", "advantage", "update", "eval")


@dataclass
class Variant:
    name: str
    precision: str
    cfg: TrainConfig
    model: object = None
    params: list = field(default_factory=list)
    optimizer: object = None
    ema: list | None = None
    old_policy: OldPolicy | None = None  # nft/awm's lagged weights, kept as the trainer keeps them
    flops: dict = field(default_factory=dict)  # per rollout sample / kept update sample / eval image
    times: dict = field(default_factory=lambda: {p: [] for p in PHASES})
    cpu: dict = field(default_factory=lambda: {p: [] for p in PHASES})  # process CPU seconds (all threads)
    samples: dict = field(default_factory=lambda: {p: [] for p in PHASES})


def build(name: str, preset: str, precision: str, out: Path, **overrides) -> Variant:
    data = {
        **load_yaml(preset),
        "out": str(out / name),
        "eval_base": False,
        "model_options": {**load_yaml(preset).get("model_options", {}), "precision": precision},
        **overrides,
    }
    cfg = from_dict(TrainConfig, data)
    torch.manual_seed(0)
    model = load_model(cfg.model, cfg.checkpoint, cfg.model_options, "cpu")
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    old_policy = OldPolicy(params) if get_objective(cfg.parts.objective).uses_old_policy else None
    return Variant(name, precision, cfg, model, params, optimizer, ema, old_policy)


def draw_rollouts(v: Variant, train_prompts: list, epoch: int, sigmas: torch.Tensor):
    """The epoch's samples, drawn by the old policy where the objective samples with it (nft), as the trainer."""
    by_old = v.old_policy is not None and get_objective(v.cfg.parts.objective).samples_with_old_policy
    with v.old_policy.active() if by_old else contextlib.nullcontext():
        return sample_epoch(v.cfg, v.model, train_prompts, epoch, sigmas)


def train_step(v: Variant, batch, advantages: torch.Tensor, keep: torch.Tensor, epoch: int) -> None:
    """The update, then the old policy's decay step (nft/awm), as the trainer."""
    cfg = v.cfg
    stats = update(cfg, v.model, v.params, v.optimizer, v.ema, batch, advantages, keep, epoch, v.old_policy)
    if v.old_policy is not None:
        v.old_policy.step(
            stats.optimizer_steps, cfg.old_policy_decay_rate, cfg.old_policy_decay_max, cfg.old_policy_decay_flat
        )


def evaluate(v: Variant, world, test_prompts: list) -> None:
    """The held-out evaluation on ``test_prompts`` (one image each, the preset's steps and CFG); none if empty."""
    if test_prompts:
        cfg = v.cfg
        evaluate_world(
            v.model,
            world,
            test_prompts,
            num_steps=cfg.eval_num_steps,
            guidance_scale=cfg.eval_guidance,
            images_per_prompt=1,
            seed=cfg.seed,
            batch_size=cfg.eval_batch_size,
        )


def run_epoch(v: Variant, epoch: int, train_prompts: list, test_prompts: list, world, reward_fn) -> dict:
    """One epoch's phases; returns (wall seconds, process CPU seconds, samples) per phase."""
    cfg, model = v.cfg, v.model
    sigmas = model.schedule(cfg.num_steps)
    marks = [(time.perf_counter(), time.process_time())]
    batch = draw_rollouts(v, train_prompts, epoch, sigmas)
    marks.append((time.perf_counter(), time.process_time()))
    scores = score_epoch(cfg, model, reward_fn, batch)
    marks.append((time.perf_counter(), time.process_time()))
    advantages, _ = compute_advantages(cfg, scores.final, scores.values, batch.group_ids)
    zero = zero_std_groups(scores.final, batch.group_ids)
    keep = ~zero if cfg.drops_zero_std else torch.ones_like(zero)
    marks.append((time.perf_counter(), time.process_time()))
    train_step(v, batch, advantages, keep, epoch)
    marks.append((time.perf_counter(), time.process_time()))
    evaluate(v, world, test_prompts)
    marks.append((time.perf_counter(), time.process_time()))
    n = len(batch.metadata)
    counts = [n, scores.images_scored, n, int(keep.sum()) * cfg.inner_epochs, len(test_prompts)]
    return {p: (marks[i + 1][0] - marks[i][0], marks[i + 1][1] - marks[i][1], counts[i]) for i, p in enumerate(PHASES)}


def count_epoch(v: Variant, epoch: int, train_prompts: list, test_prompts: list, world, reward_fn) -> None:
    """The warm-up epoch, phase by phase under the FLOP counter: FLOPs per sample of each phase."""
    cfg, model = v.cfg, v.model
    sigmas = model.schedule(cfg.num_steps)
    holder = {}
    rollout = count_flops(lambda: holder.setdefault("batch", draw_rollouts(v, train_prompts, epoch, sigmas)))
    batch = holder["batch"]
    scores = score_epoch(cfg, model, reward_fn, batch)
    advantages, _ = compute_advantages(cfg, scores.final, scores.values, batch.group_ids)
    keep = torch.ones(len(batch.metadata), dtype=torch.bool)  # every sample: the count per sample is exact
    upd = count_flops(lambda: train_step(v, batch, advantages, keep, epoch))
    evl = count_flops(lambda: evaluate(v, world, test_prompts))
    n = len(batch.metadata)
    v.flops = {"rollout": rollout / n, "update": upd / (n * cfg.inner_epochs), "eval": evl / max(1, len(test_prompts))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="shapes", choices=("shapes", "text"), help="presets configs/<world>-*.yaml")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["vgpo"],
        help="presets configs/<world>-<algo>.yaml; grpo-keep: GRPO keeping zero-std groups",
    )
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "auto"))
    parser.add_argument("--tcrm-every", type=int, nargs="+", default=[1], help="VGPO variants, one per value")
    parser.add_argument("--epochs", type=int, default=4, help="per variant, the first one untimed (FLOP count)")
    parser.add_argument("--eval-prompts", type=int, default=16, help="held-out prompts timed per epoch (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--clock-ghz", type=float, default=0.0, help="core clock for the peak (0: /proc/cpuinfo's)")
    parser.add_argument(
        "--fma-units",
        type=int,
        default=2,
        help="vector FMA pipes per core for the peak (AVX-512 or AVX2 wide, from the CPU flags)",
    )
    parser.add_argument("--out", default="", help="default runs/speed-<world>")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_from_env("cpu")
    out = Path(args.out or f"runs/speed-{args.world}")
    out.mkdir(parents=True, exist_ok=True)
    world = get_world(args.world)

    variants = []
    for algo in args.algorithms:
        for k in args.tcrm_every if algo == "vgpo" else [1]:
            for prec in args.precision:
                name = f"{algo}{'' if k == 1 else f'-tcrm{k}'}-{prec}"
                extra = {"tcrm_every": k} if algo == "vgpo" else {}
                if algo == "grpo-keep":  # GRPO on every sample: the same update work as VGPO
                    extra = {"drop_zero_std_groups": False}
                preset = f"configs/{args.world}-{algo.removesuffix('-keep')}.yaml"
                variants.append(build(name, preset, prec, out, **extra))
    cfg0 = variants[0].cfg
    train_prompts = world.load_prompts(world.train_file)
    test_prompts = world.load_prompts(world.test_file)[: args.eval_prompts]
    reward_fn = build_reward(cfg0.reward_spec(world.reward))
    ceilings = {p: matmul_ceiling(torch.float32 if p == "fp32" else torch.bfloat16) for p in ("fp32", "bf16")}
    # The peak of the cores the run may use: one per thread.
    cores = min(args.threads, len(os.sched_getaffinity(0)))
    peaks = {p: cpu_peak(p, cores=cores, clock_ghz=args.clock_ghz, fma_units=args.fma_units) for p in ("fp32", "bf16")}

    for epoch in range(args.epochs):
        for v in variants:
            if epoch == 0:
                count_epoch(v, epoch, train_prompts, test_prompts, world, reward_fn)
                continue
            for phase, (seconds, cpu, n) in run_epoch(v, epoch, train_prompts, test_prompts, world, reward_fn).items():
                v.times[phase].append(seconds)
                v.cpu[phase].append(cpu)
                v.samples[phase].append(n)
            print(f"epoch {epoch} {v.name}: " + " ".join(f"{p} {v.times[p][-1]:.2f}s" for p in PHASES), flush=True)

    resolved = {v.name: v.model.precision for v in variants}
    print(f"\n{torch.get_num_threads()} threads; timed epochs {args.epochs - 1}; median (min-max) seconds per phase")
    for p in ("fp32", "bf16"):
        print(
            f"peak {peaks[p].describe()}; measured 2048^3 matmul {ceilings[p][0]:.0f} GFLOP/s "
            f"({ceilings[p][1]:.0f} per CPU-second x threads)"
        )
    # GFLOP/s by wall time, and by CPU time / threads (what the cores did while this process had them:
    # on a shared machine the wall-time figure mostly measures the other processes).
    header = (
        f"{'variant':22}{'phase':10}{'seconds':>22}{'CPU s':>8}{'samples/s':>11}{'GFLOP/sample':>13}"
        f"{'GFLOP/s':>9}{'%peak':>7}{'%matmul':>8}{'GFLOP/CPU-s':>12}{'%peak':>7}{'%matmul':>8}"
    )
    print(header)
    results = {}
    for v in variants:
        prec = resolved[v.name]
        results[v.name] = {"precision": prec, "phases": {}}
        for p in PHASES:
            ts, ns = v.times[p], v.samples[p]
            if not ts:
                continue
            med = statistics.median(ts)
            rate = statistics.median([n / t for n, t in zip(ns, ts) if t > 0]) if any(ns) else 0.0
            per = v.flops.get(p, 0.0)
            gflops = statistics.median([per * n / t / 1e9 for n, t in zip(ns, ts) if t > 0]) if per else 0.0
            threads = torch.get_num_threads()
            gcpu = (
                statistics.median([per * n / (c / threads) / 1e9 for n, c in zip(ns, v.cpu[p]) if c > 0])
                if per
                else 0.0
            )
            row = {
                "seconds_median": med,
                "seconds_min": min(ts),
                "seconds_max": max(ts),
                "cpu_seconds_median": statistics.median(v.cpu[p]),
                "samples_per_s": rate,
                "gflop_per_sample": per / 1e9,
                "gflop_per_s": gflops,
                "peak_fraction": gflops / peaks[prec].gflops if per else None,
                "matmul_fraction": gflops / ceilings[prec][0] if per else None,
                "gflop_per_cpu_s": gcpu,
                "cpu_peak_fraction": gcpu / peaks[prec].gflops if per else None,
                "cpu_matmul_fraction": gcpu / ceilings[prec][1] if per else None,
            }
            results[v.name]["phases"][p] = row
            flop_cols = (
                f"{per / 1e9:13.2f}{gflops:9.1f}{row['peak_fraction']:7.1%}{row['matmul_fraction']:8.1%}"
                f"{gcpu:12.1f}{row['cpu_peak_fraction']:7.1%}{row['cpu_matmul_fraction']:8.1%}"
                if per
                else f"{'-':>13}{'-':>9}{'-':>7}{'-':>8}{'-':>12}{'-':>7}{'-':>8}"
            )
            print(
                f"{v.name:22}{p:10}{med:9.2f} ({min(ts):5.2f}-{max(ts):5.2f}){row['cpu_seconds_median']:8.2f}{rate:11.1f}"
                + flop_cols
            )
        train_phases = ("rollout", "reward", "advantage", "update")
        epoch_times = [sum(v.times[p][i] for p in train_phases) for i in range(len(v.times["update"]))]
        epoch_cpu = [sum(v.cpu[p][i] for p in train_phases) for i in range(len(v.cpu["update"]))]
        results[v.name]["epoch_seconds"], results[v.name]["epoch_cpu_seconds"] = epoch_times, epoch_cpu
        print(
            f"{v.name:22}{'epoch':10}{statistics.median(epoch_times):9.2f} ({min(epoch_times):5.2f}-{max(epoch_times):5.2f})"
            f"{statistics.median(epoch_cpu):8.2f}"
        )
    # Speed-ups epoch by epoch (the same epoch of both variants ran back to back): median and range.
    for base in (v for v in variants if v.precision == "fp32"):
        stem = base.name.removesuffix("-fp32")
        for other in (v for v in variants if v.name != base.name and v.name.rsplit("-", 1)[0] == stem):
            for p in (
                ("rollout", "update", "eval", "epoch") if any(base.samples["eval"]) else ("rollout", "update", "epoch")
            ):
                for what, key in (("wall", "times"), ("CPU", "cpu")):
                    a = (
                        results[base.name][f"epoch_{'' if key == 'times' else 'cpu_'}seconds"]
                        if p == "epoch"
                        else getattr(base, key)[p]
                    )
                    b = (
                        results[other.name][f"epoch_{'' if key == 'times' else 'cpu_'}seconds"]
                        if p == "epoch"
                        else getattr(other, key)[p]
                    )
                    r = [x / y for x, y in zip(a, b) if y > 0]
                    if r:
                        print(
                            f"speed-up {other.name} over {base.name}, {p} ({what}): {statistics.median(r):.2f}x "
                            f"({min(r):.2f}-{max(r):.2f})"
                        )
    results["_machine"] = {
        "threads": torch.get_num_threads(),
        "peaks": {p: peaks[p].describe() for p in peaks},
        "matmul_gflops": ceilings,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'speed.json'}")


if __name__ == "__main__":
    main()
