"""Samples per second of a training epoch, rollout + reward + update, in pixel space and in an autoencoder's
latent space, at the same U-Net widths, at wider ones, and with the MM-DiT backbone.

    python benchmarks/latent_speed.py --ae runs/ae-shapes [--epochs 3] [--threads 2] [--out runs/speed-latent]

Each model is an untrained tiny model of the shipped base's text and time embeddings (speed does not
depend on the weights) saved under ``--out``; each runs ``--epochs`` epochs of ``configs/shapes-grpo.yaml``
(8 prompts x 8 images, 10 steps, every sample kept) through ``benchmarks/epoch_speed.py``'s phases, with
the first epoch dropped as warm-up; medians over the other epochs, wall and process CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
from pathlib import Path

import torch

from epoch_speed import build, run_epoch
from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.rewards import build as build_reward
from vgpo.worlds import get_world

MODELS = [  # (U-Net widths, in the autoencoder's latent space?, note, other TinyConfig fields)
    ((32, 64, 128), False, " (the shipped base's)", {}),
    ((32, 64, 128), True, "", {}),
    ((64, 128, 256), True, "", {}),
    ((32, 64, 128), True, "", {"backbone": "dit", "dit_width": 128, "dit_depth": 6}),
]
TRAIN_PHASES = ("rollout", "reward", "advantage", "update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae", required=True, help="autoencoder folder written by `vgpo pretrain-ae`")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="runs/speed-latent")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first is a warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    world, out = get_world("shapes"), Path(args.out)
    train_prompts = world.load_prompts(world.train_file)
    rows = {}
    for i, (channels, latent, note, extra) in enumerate(MODELS):
        torch.manual_seed(0)
        cfg = TinyConfig(
            vocab=world.vocabulary(),
            image_size=world.image_size,
            channels=channels,
            text_encoder="ordered",
            latent=args.ae if latent else "",
            **extra,
        )
        model = TinyFlowModel(cfg)
        c, h, w = model.latent_shape
        dit = cfg.backbone == "dit"
        net = f"DiT {cfg.dit_width} wide, {cfg.dit_depth} blocks" if dit else f"widths {'/'.join(map(str, channels))}"
        name = f"{'latent' if latent else 'pixel'} {h}x{w}x{c}, {net}{note}"
        model.save(out / f"model-{i}")
        v = build(
            f"run-{i}",
            "configs/shapes-grpo.yaml",
            "fp32",
            out,
            checkpoint=str(out / f"model-{i}"),
            drop_zero_std_groups=False,
        )
        reward_fn = build_reward(v.cfg.reward_spec(world.reward))
        epochs = [run_epoch(v, e, train_prompts, [], world, reward_fn) for e in range(args.epochs)][1:]
        summary = {f"time/{p}_s": statistics.median(e[p][0] for e in epochs) for p in TRAIN_PHASES}
        summary["time/epoch_s"] = statistics.median(sum(e[p][0] for p in TRAIN_PHASES) for e in epochs)
        summary["cpu/epoch_s"] = statistics.median(sum(e[p][1] for p in TRAIN_PHASES) for e in epochs)
        summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        samples = epochs[0]["rollout"][2]  # the preset's prompts_per_epoch x group_size
        rows[name] = {
            "params_M": round(model.num_parameters() / 1e6, 2),
            "samples_per_s": samples / summary["time/epoch_s"],
            **summary,
        }
        print(
            f"{name}: {rows[name]['samples_per_s']:.1f} samples/s "
            f"(epoch {summary['time/epoch_s']:.2f} s, {summary['cpu/epoch_s']:.2f} CPU s: rollout "
            f"{summary['time/rollout_s']:.2f}, reward {summary['time/reward_s']:.2f}, update "
            f"{summary['time/update_s']:.2f}), {rows[name]['params_M']} M parameters, "
            f"peak RSS so far {summary['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    (out / "speed.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
