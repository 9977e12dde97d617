"""Seconds per training epoch on a world's presets, split into rollout / reward / advantage / update,
the share of the update spent in the network's forward+backward, VGPO's epoch time over GRPO's and
peak RSS.

    python benchmarks/epoch_speed.py [--world shapes|text] [--epochs 3] [--tcrm-every 1 2 5] [--out DIR]

Each algorithm runs ``--epochs`` epochs of ``configs/<world>-<algo>.yaml`` from the shipped base
(held-out evaluation reduced to one prompt, since it is not what is timed); the first epoch is
dropped as warm-up. GRPO is timed twice: as configured (zero-std groups dropped, so it updates on
fewer samples) and with every sample kept (the same update work as VGPO). VGPO runs once per
``--tcrm-every`` value: scoring every k-th projection is the cost lever when the reward is expensive
(the text world's OCR).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from vgpo.config import from_dict, load_yaml
from vgpo.train import TrainConfig, train
from vgpo.train.run_folder import METRICS, read_metrics

KEYS = ["time/rollout_s", "time/reward_s", "time/advantage_s", "time/update_s", "time/fwd_bwd_s", "time/epoch_s"]


def timed_run(name: str, preset: str, out: Path, epochs: int, **overrides) -> dict:
    data = {**load_yaml(preset), "out": str(out / name), "epochs": epochs, "eval_limit": 1, "eval_every": 0,
            "eval_num_steps": 2, **overrides}
    run = train(from_dict(TrainConfig, data), overwrite=True)  # a re-measurement replaces the last one
    rows = read_metrics(run / METRICS)
    rows = [r for r in rows if "time/epoch_s" in r][1:]  # drop the warm-up epoch
    summary = {k: statistics.mean(r[k] for r in rows) for k in KEYS}
    summary["fwd_bwd_share"] = summary["time/fwd_bwd_s"] / summary["time/update_s"]
    summary["reward_images"] = rows[-1]["perf/reward_images"]
    summary["peak_rss_mb"] = max(r["perf/peak_rss_mb"] for r in rows)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="shapes", choices=("shapes", "text"), help="presets configs/<world>-*.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tcrm-every", type=int, nargs="+", default=[1], help="VGPO runs, one per value (1: the paper)")
    parser.add_argument("--out", default="", help="default runs/speed-<world>")
    args = parser.parse_args()
    out = Path(args.out or f"runs/speed-{args.world}")

    def preset(algo: str) -> str:
        return f"configs/{args.world}-{algo}.yaml"

    results = {
        "grpo": timed_run("grpo", preset("grpo"), out, args.epochs),
        "grpo-keep-all": timed_run("grpo-keep", preset("grpo"), out, args.epochs, drop_zero_std_groups=False),
    }
    for k in args.tcrm_every:
        name = "vgpo" if k == 1 else f"vgpo-tcrm-every-{k}"
        results[name] = timed_run(name, preset("vgpo"), out, args.epochs, tcrm_every=k)
    print(f"{'':20}" + "".join(f"{k.split('/')[-1]:>12}" for k in KEYS) + f"{'fwd/bwd':>9}{'rss MB':>8}{'scored':>8}")
    for name, s in results.items():
        print(f"{name:20}" + "".join(f"{s[k]:12.2f}" for k in KEYS) + f"{s['fwd_bwd_share']:9.1%}"
              f"{s['peak_rss_mb']:8.0f}{s['reward_images']:8d}")
    for name in (n for n in results if n.startswith("vgpo")):
        for ref in ("grpo", "grpo-keep-all"):
            print(f"{name} epoch time / {ref}: {results[name]['time/epoch_s'] / results[ref]['time/epoch_s']:.2f}x")
    (out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
