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

import vgpo.train.trainer as trainer
from vgpo.config import from_dict
from vgpo.train import TrainConfig
from vgpo.train.run_folder import METRICS, read_metrics
from vgpo.utils import derive_seed
from vgpo.worlds import get_world

_advantages = trainer.compute_advantages
_epoch = {"n": 0}


def shuffled_advantages(cfg: TrainConfig, final: torch.Tensor, values: torch.Tensor, group_ids: torch.Tensor):
    adv, omega = _advantages(cfg, final, values, group_ids)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, _epoch["n"], "shuffled-control"))
    _epoch["n"] += 1
    perm = torch.randperm(adv.shape[0], generator=gen)
    return adv[perm], omega[perm]


def headline_curve(run: Path, headline: str) -> list[tuple[int, float]]:
    rows = read_metrics(run / METRICS)
    return [(r["epoch"], r[f"eval/{headline}"]) for r in rows if f"eval/{headline}" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/shuffled"))
    args = parser.parse_args()
    trainer.compute_advantages = shuffled_advantages
    for run in args.runs:
        cfg = from_dict(TrainConfig, json.loads((run / "config.json").read_text()), f"{run}/config.json: ")
        cfg.out = str(args.out / "_".join(run.parts[-3:]))
        _epoch["n"] = 0
        control = Path(trainer.train(cfg, overwrite=True))  # a rerun redoes the control
        headline = get_world(cfg.world).headline
        real, shuffled = headline_curve(run, headline), headline_curve(control, headline)
        print(f"{run}: {headline} {real[0][1]:.3f} -> {real[-1][1]:.3f} ({real[-1][1] - real[0][1]:+.3f}); "
              f"shuffled advantages {shuffled[0][1]:.3f} -> {shuffled[-1][1]:.3f} ({shuffled[-1][1] - shuffled[0][1]:+.3f})",
              flush=True)


if __name__ == "__main__":
    main()
