"""Samples per second of a training epoch, rollout + reward + update, in pixel space and in an autoencoder's
latent space, at the same U-Net widths and at wider ones.

    python benchmarks/latent_speed.py --ae runs/ae-shapes [--epochs 3] [--threads 2] [--out runs/speed-latent]

Each model is an untrained tiny model of the shipped base's text and time embeddings (speed does not
depend on the weights) saved under ``--out``; each runs ``--epochs`` epochs of ``configs/shapes-grpo.yaml``
(8 prompts x 8 images, 10 steps, every sample kept) with the first epoch dropped as warm-up, as
``benchmarks/epoch_speed.py`` times the presets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from epoch_speed import timed_run
from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.worlds import get_world

MODELS = {  # name: (channels, latent?)
    "pixel 32x32x3, widths 32/64/128 (the shipped base's)": ((32, 64, 128), False),
    "latent 8x8x4, widths 32/64/128": ((32, 64, 128), True),
    "latent 8x8x4, widths 64/128/256": ((64, 128, 256), True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae", required=True, help="autoencoder folder written by `vgpo pretrain-ae`")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="runs/speed-latent")
    args = parser.parse_args()
    world, out = get_world("shapes"), Path(args.out)
    rows = {}
    for i, (name, (channels, latent)) in enumerate(MODELS.items()):
        torch.manual_seed(0)
        cfg = TinyConfig(
            vocab=world.vocabulary(),
            image_size=world.image_size,
            channels=channels,
            text_encoder="ordered",
            latent=args.ae if latent else "",
        )
        model = TinyFlowModel(cfg)
        model.save(out / f"model-{i}")
        summary = timed_run(
            f"run-{i}",
            "configs/shapes-grpo.yaml",
            out,
            args.epochs,
            checkpoint=str(out / f"model-{i}"),
            drop_zero_std_groups=False,
            threads=args.threads,
        )
        samples = 8 * 8  # the preset's prompts_per_epoch x group_size
        rows[name] = {
            "params_M": round(model.num_parameters() / 1e6, 2),
            "samples_per_s": samples / summary["time/epoch_s"],
            **summary,
        }
        print(
            f"{name}: {rows[name]['samples_per_s']:.1f} samples/s "
            f"(epoch {summary['time/epoch_s']:.2f} s: rollout {summary['time/rollout_s']:.2f}, "
            f"reward {summary['time/reward_s']:.2f}, update {summary['time/update_s']:.2f}), "
            f"{rows[name]['params_M']} M parameters, peak RSS {summary['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    (out / "speed.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
