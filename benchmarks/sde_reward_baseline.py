"""The training reward of the shipped base with no update: what a training run's `reward/mean` curve
should be compared with (same seed, so the same prompts and noise in every epoch).

    python benchmarks/sde_reward_baseline.py [--sampler sde cps ode] [--noise-levels 0.7 0.3] [--epochs 20]
        [--set key=value ...]

For each sampler and noise level (the ode sampler has none): the strict reward of each epoch's samples
(the shapes-vgpo preset's prompts, groups, steps and CFG), its mean, and its mean over the last 10 epochs.
"""

from __future__ import annotations

import argparse

import torch

from vgpo.config import from_dict, load_yaml, parse_overrides
from vgpo.models import load_model
from vgpo.rewards import build
from vgpo.train import TrainConfig
from vgpo.train.trainer import sample_epoch, score_epoch
from vgpo.worlds import get_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sampler", nargs="+", default=["sde"], choices=["sde", "cps", "ode"], help="rollout samplers to measure"
    )
    parser.add_argument("--noise-levels", type=float, nargs="+", default=[0.7, 0.3])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset overrides")
    args = parser.parse_args()
    base = {**load_yaml("configs/shapes-vgpo.yaml"), **parse_overrides(args.set), "algorithm": "grpo"}
    for sampler in args.sampler:
        # Nothing is trained here; the objective only has to be one that the sampler can feed (ODE
        # rollouts have no log-probs for PPO).
        parts = {"sampler": sampler, "objective": "nft" if sampler == "ode" else "ppo"}
        for level in args.noise_levels if sampler != "ode" else [0.0]:
            cfg = from_dict(TrainConfig, {**base, **parts, "noise_level": level})
            world = get_world(cfg.world)
            prompts = world.load_prompts(world.train_file)
            model = load_model(cfg.model, cfg.checkpoint, cfg.model_options)
            reward = build(cfg.reward_spec(world.reward))
            sigmas = model.schedule(cfg.num_steps)
            means = [
                score_epoch(cfg, model, reward, sample_epoch(cfg, model, prompts, e, sigmas)).final.mean().item()
                for e in range(args.epochs)
            ]
            tail = means[-10:]
            label = sampler if sampler == "ode" else f"{sampler} noise level {level}"
            print(
                f"{label}: "
                + " ".join(f"{m:.2f}" for m in means)
                + f" | mean {sum(means) / len(means):.3f}, last 10 {sum(tail) / len(tail):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
