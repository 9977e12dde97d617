"""``vgpo train`` and ``vgpo demo``."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from vgpo.config import add_config_args, config_from_args, from_dict, load_yaml
from vgpo.errors import VgpoError

DEMO_PRESET = Path("configs/shapes-vgpo-demo.yaml")


def _cmd_train(args: argparse.Namespace) -> None:
    from vgpo.train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args)
    out = train(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"metrics: {out}/metrics.jsonl  checkpoint: {out}/checkpoint  curve: {out}/reward.png")


def _cmd_demo(args: argparse.Namespace) -> None:
    from vgpo.train import TrainConfig, train
    from vgpo.train.algorithms import describe, resolve
    from vgpo.train.run_folder import eval_files
    from vgpo.worlds import get_world

    if not DEMO_PRESET.is_file():
        raise VgpoError(f"{DEMO_PRESET}: not found; run `vgpo demo` from the repository root")
    data = load_yaml(DEMO_PRESET)
    data["out"] = args.out
    cfg = from_dict(TrainConfig, data, f"{DEMO_PRESET}: ")
    started = time.time()
    out = train(cfg, resume=args.resume, overwrite=args.overwrite)
    wall = time.time() - started
    world = get_world(cfg.world)
    report = out / "report"
    report.mkdir(exist_ok=True)
    evals = eval_files(out)
    before, after = json.loads(evals[0].read_text()), json.loads(evals[-1].read_text())
    shutil.copy(evals[0].with_suffix(".png"), report / "before.png")
    shutil.copy(evals[-1].with_suffix(".png"), report / "after.png")
    shutil.copy(out / "reward.png", report / "reward.png")
    key = world.headline
    lines = [
        f"# vgpo demo: {describe(resolve(cfg))} on {cfg.world}, {cfg.epochs} epochs, {wall / 60:.1f} min",
        "",
        f"Held-out {key}: {before[key]:.3f} (base) -> {after[key]:.3f} (after RL), {after[key] - before[key]:+.3f} "
        f"(1 SE of each score {world.headline_standard_error(before):.3f} and "
        f"{world.headline_standard_error(after):.3f}, the sampling noise of the images drawn; "
        "`python benchmarks/demo_seeds.py` compares seeds and shuffled-advantage controls)",
        "",
        "## Base",
        "```",
        world.format_table(before),
        "```",
        "## After RL",
        "```",
        world.format_table(after),
        "```",
        "Grids: before.png, after.png. Curve: reward.png. Metrics: ../metrics.jsonl.",
    ]
    (report / "REPORT.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))
    print(f"report: {report}/REPORT.md")


def add_commands(sub) -> None:
    from vgpo.train import TrainConfig

    p = sub.add_parser("train", help="RL fine-tuning (Flow-GRPO, VGPO and ablations)")
    add_config_args(p, TrainConfig)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out>/checkpoint (the config may change only epochs, threads, out, "
        "sample/eval batch sizes, eval_every, save_every and eval_base)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an <out> that holds a run: its checkpoint, metrics and evaluations are deleted",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help=f"VGPO on Shapes from the shipped base ({DEMO_PRESET}), with a report")
    p.add_argument("--out", default="runs/demo", help="output folder (report in <out>/report)")
    p.add_argument("--resume", action="store_true", help="continue a killed demo")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a demo run")
    p.set_defaults(func=_cmd_demo)
