"""The ``vgpo`` command line: pretrain, eval, train, demo, bench."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vgpo.errors import VgpoError


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from vgpo.config import config_from_args
    from vgpo.pretrain import PretrainConfig, pretrain

    cfg = config_from_args(PretrainConfig, args)
    out = pretrain(cfg)
    print(f"wrote {out}/model.safetensors and {out}/config.json")


def _cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from vgpo.evaluate import evaluate_world
    from vgpo.images import save_grid
    from vgpo.models.tiny import TinyFlowModel
    from vgpo.utils import atomic_write_text
    from vgpo.worlds import get_world

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        from vgpo.train.trainer import load_trained_model

        model, train_cfg, _ = load_trained_model(args.run)
        default_world, source = train_cfg.world, args.run
    else:
        model = TinyFlowModel.load(args.checkpoint, precision=args.precision)
        default_world, source = model.cfg.world, args.checkpoint
    world = get_world(args.world or default_world)
    metas = world.load_prompts(Path(args.prompts) if args.prompts else world.test_file)
    if args.limit:
        metas = metas[: args.limit]
    started = time.time()
    result = evaluate_world(model, world, metas, num_steps=args.steps, guidance_scale=args.cfg,
                            images_per_prompt=args.images_per_prompt, seed=args.seed, batch_size=args.batch_size)
    wall = time.time() - started
    print(world.format_table(result.metrics))
    print(f"{len(result.metadata)} images, {args.steps} ODE steps, cfg {args.cfg}, {wall:.1f} s")
    if args.json:
        payload = {"checkpoint": str(source), "world": world.name, "steps": args.steps, "cfg": args.cfg,
                   "images": len(result.metadata), "seed": args.seed, "precision": getattr(model, "precision", None), "wall_s": round(wall, 1), "metrics": result.metrics}
        atomic_write_text(json.dumps(payload, indent=2) + "\n", args.json)
        print(f"wrote {args.json}")
    if args.grid:
        n = min(args.grid_size, len(result.metadata))
        save_grid(result.images[:n], [m["prompt"] for m in result.metadata[:n]], args.grid)
        print(f"wrote {args.grid}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from vgpo.config import add_config_args
    from vgpo.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help="train a tiny base model on a world's renders")
    add_config_args(p, PretrainConfig)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("eval", help="sample the held-out prompts with the ODE and print the world's table")
    p.add_argument("--checkpoint", default="checkpoints/shapes-base", help="folder with model.safetensors + config.json")
    p.add_argument("--run", default=None, help="a `vgpo train` output folder: evaluate its (EMA) weights instead")
    p.add_argument("--world", default=None, help="world (default: the checkpoint's)")
    p.add_argument("--prompts", default=None, help="prompt file (default: the world's test split)")
    p.add_argument("--steps", type=int, default=40, help="ODE steps")
    p.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance scale")
    p.add_argument("--images-per-prompt", type=int, default=2, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per sampling batch (results do not depend on it)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N prompts (0: all)")
    p.add_argument("--json", default=None, help="write the table as JSON here")
    p.add_argument("--grid", default=None, help="write a PNG grid of samples with their prompts here")
    p.add_argument("--grid-size", type=int, default=48, help="images in the grid")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the network's precision with --checkpoint (auto: bf16 where native; a --run uses its model_options)")
    p.set_defaults(func=_cmd_eval)

    from vgpo.bench.cli import add_commands as add_bench_commands
    from vgpo.train.cli import add_commands as add_train_commands

    add_train_commands(sub)
    add_bench_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VgpoError as err:
        print(f"vgpo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vgpo: interrupted; checkpoints already written are intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
