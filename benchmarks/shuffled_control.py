"""Does a benchmark run's held-out gain come from its reward? Re-train it with the advantages shuffled.

    python benchmarks/shuffled_control.py RUN_DIR [RUN_DIR ...] [--out runs/shuffled]

Each RUN_DIR is a finished `vgpo train` / `vgpo bench` run (its config.json is reused unchanged but
for ``out``). The control run draws the same prompts and noise, and every epoch permutes the
advantages across the epoch's samples (a fixed function of seed and epoch), so the update has the
run's size and statistics but no information from the reward. A gain that the control shows too is
not the reward's doing. Prints, per run, the headline held-out metric at epoch 0 and at the end for
the run and its control.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vgpo.config import from_dict
from vgpo.train import TrainConfig, TrainHooks, train
from vgpo.train.run_folder import METRICS, read_metrics
from vgpo.utils import derive_seed
from vgpo.worlds import get_world


def shuffling_hooks(seed: int) -> TrainHooks:
    """Every epoch, permute the (clipped) advantages and step weights across the epoch's samples."""

    def on_advantages(epoch: int, adv: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(seed, epoch, "shuffled-control"))
        perm = torch.randperm(adv.shape[0], generator=gen)
        return adv[perm], omega[perm]

    return TrainHooks(on_advantages=on_advantages)


def headline_curve(run: Path, headline: str) -> list[tuple[int, float]]:
    rows = read_metrics(run / METRICS)
    return [(r["epoch"], r[f"eval/{headline}"]) for r in rows if f"eval/{headline}" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/shuffled"))
    args = parser.parse_args()
    for run in args.runs:
        data = json.loads((run / "config.json").read_text())
        # Runs recorded before the field existed trained the exact CFG gradient: the control must too.
        data.setdefault("cfg_uncond_grad", True)
        cfg = from_dict(TrainConfig, data, f"{run}/config.json: ")
        cfg.out = str(args.out / "_".join(run.parts[-3:]))
        control = Path(train(cfg, hooks=shuffling_hooks(cfg.seed), overwrite=True))  # a rerun redoes the control
        headline = get_world(cfg.world).headline
        real, shuffled = headline_curve(run, headline), headline_curve(control, headline)
        print(
            f"{run}: {headline} {real[0][1]:.3f} -> {real[-1][1]:.3f} ({real[-1][1] - real[0][1]:+.3f}); "
            f"shuffled advantages {shuffled[0][1]:.3f} -> {shuffled[-1][1]:.3f} ({shuffled[-1][1] - shuffled[0][1]:+.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
