"""How much signal each Shapes training reward gives on the shipped base's own samples, with no update.

    python benchmarks/reward_signal.py [--epochs 8] [--prompts 8] [--group 8] [--threads 1]

Each epoch draws ``--prompts`` training prompts (tag-balanced, as the trainer draws them) and samples
``--group`` images per prompt with the training rollout (10 steps, CFG 4.5), once with the SDE (noise
level 0.7) and once with the ODE from the same initial noise. Every image is scored by each reward; per
reward and sampler the table gives the mean, the fraction of groups whose rewards are all equal (no
GRPO advantage: Flow-GRPO drops or zeroes them) and the mean within-group standard deviation.
"""

from __future__ import annotations

import argparse
import time

import torch

from vgpo.models.tiny import TinyFlowModel
from vgpo.rewards import build
from vgpo.sampling.rollout import rollout
from vgpo.utils import derive_seed
from vgpo.worlds import balanced_choice, get_world

REWARDS = ("geneval-shapes-strict", "geneval-shapes", "geneval-shapes-server")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes-base")
    parser.add_argument("--prompts-file", default="", help="default: the world's train split")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per epoch")
    parser.add_argument("--group", type=int, default=8, help="images per prompt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg", type=float, default=4.5)
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = TinyFlowModel.load(args.checkpoint)
    world = get_world(model.cfg.world)
    prompts = world.load_prompts(args.prompts_file or world.train_file)
    rewards = {name: build(name) for name in REWARDS}
    sigmas = model.schedule(args.steps)
    values: dict[tuple[str, str], list[torch.Tensor]] = {}
    started = time.time()
    for epoch in range(args.epochs):
        chosen = balanced_choice(prompts, args.prompts, torch.Generator().manual_seed(derive_seed(args.seed, epoch)))
        metas = [prompts[i] for i in chosen for _ in range(args.group)]
        texts = [m["prompt"] for m in metas]
        cond, uncond = model.encode_prompts(texts), model.negative_condition(len(texts))
        for sampler, level in (("sde", args.noise_level), ("ode", 0.0)):
            gens = [torch.Generator().manual_seed(derive_seed(args.seed, epoch, k)) for k in range(len(metas))]
            images = model.decode(rollout(model, cond, uncond, sigmas, level, args.cfg, generator=gens).final)
            for name, reward in rewards.items():
                values.setdefault((name, sampler), []).append(
                    reward(images, texts, metas).view(args.prompts, args.group)
                )
    print(
        f"{args.epochs} epochs x {args.prompts} prompts x {args.group} images, {args.steps} steps, cfg {args.cfg}, "
        f"SDE noise {args.noise_level}; {time.time() - started:.0f} s"
    )
    print(f"{'reward':<24}{'sampler':>8}{'mean':>8}{'zero-std groups':>17}{'mean group std':>16}")
    for (name, sampler), groups in values.items():
        g = torch.cat(groups)
        zero = (g.max(1).values == g.min(1).values).float().mean().item()
        print(f"{name:<24}{sampler:>8}{g.mean().item():>8.3f}{zero:>17.2f}{g.std(1).mean().item():>16.3f}")


if __name__ == "__main__":
    main()
