"""The ``vgpo`` command line: pretrain, eval, train, demo, bench."""

from __future__ import annotations

import argparse
import dataclasses
import errno
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


def _cmd_pretrain_ae(args: argparse.Namespace) -> None:
    from vgpo.config import config_from_args
    from vgpo.pretrain_ae import AutoencoderTrainConfig, pretrain_autoencoder

    cfg = config_from_args(AutoencoderTrainConfig, args)
    out = pretrain_autoencoder(cfg)
    print(f"wrote {out}/autoencoder.safetensors and {out}/config.json")


def _cmd_eval(args: argparse.Namespace) -> None:
    import torch

    from vgpo.evaluate import EvalConfig, evaluate_world
    from vgpo.images import save_grid
    from vgpo.models.tiny import TinyFlowModel
    from vgpo.utils import atomic_write_text
    from vgpo.worlds import get_world

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        from vgpo.train.run_folder import load_trained_model

        model, train_cfg, _ = load_trained_model(args.run)
        default_world, source = train_cfg.world, args.run
    else:
        model = TinyFlowModel.load(args.checkpoint, precision=args.precision)
        default_world, source = model.cfg.world, args.checkpoint
    world = get_world(args.world or default_world)
    metas = world.load_prompts(Path(args.prompts) if args.prompts else world.prompt_file(args.split))
    ec = EvalConfig(
        num_steps=args.steps,
        guidance_scale=args.cfg,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit,
    )
    if ec.limit:
        metas = metas[: ec.limit]
    started = time.time()
    result = evaluate_world(
        model,
        world,
        metas,
        num_steps=ec.num_steps,
        guidance_scale=ec.guidance_scale,
        images_per_prompt=ec.images_per_prompt,
        seed=ec.seed,
        batch_size=ec.batch_size,
    )
    wall = time.time() - started
    print(world.format_table(result.metrics))
    print(f"{len(result.metadata)} images, {ec.num_steps} ODE steps, cfg {ec.guidance_scale}, {wall:.1f} s")
    if args.json:
        payload = {
            "checkpoint": str(source),
            "world": world.name,
            "steps": ec.num_steps,
            "cfg": ec.guidance_scale,
            "images": len(result.metadata),
            "seed": ec.seed,
            "precision": getattr(model, "precision", None),
            "wall_s": round(wall, 1),
            "metrics": result.metrics,
        }
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
    from vgpo.worlds import SPLITS

    p = sub.add_parser("pretrain", help="train a tiny base model on a world's renders")
    add_config_args(p, PretrainConfig)
    p.set_defaults(func=_cmd_pretrain)

    from vgpo.pretrain_ae import AutoencoderTrainConfig

    p = sub.add_parser("pretrain-ae", help="train the latent autoencoder a tiny model can work in (--latent)")
    add_config_args(p, AutoencoderTrainConfig)
    p.set_defaults(func=_cmd_pretrain_ae)

    p = sub.add_parser("eval", help="sample the held-out prompts with the ODE and print the world's table")
    p.add_argument(
        "--checkpoint", default="checkpoints/shapes-base", help="folder with model.safetensors + config.json"
    )
    p.add_argument("--run", default=None, help="a `vgpo train` output folder: evaluate its (EMA) weights instead")
    p.add_argument("--world", default=None, help="world (default: the checkpoint's)")
    p.add_argument("--prompts", default=None, help="prompt file (default: the world's --split)")
    p.add_argument(
        "--split",
        default="test",
        choices=SPLITS,
        help="shipped split to evaluate when no --prompts: test, or val to choose recipes without it",
    )
    # The flags are EvalConfig's fields under their established names; defaults and help come from it.
    from vgpo.evaluate import EvalConfig

    evf = {f.name: f for f in dataclasses.fields(EvalConfig)}
    for flag, name in (
        ("--steps", "num_steps"),
        ("--cfg", "guidance_scale"),
        ("--images-per-prompt", "images_per_prompt"),
        ("--seed", "seed"),
        ("--batch-size", "batch_size"),
        ("--limit", "limit"),
    ):
        f = evf[name]
        p.add_argument(flag, type=type(f.default), default=f.default, help=f.metadata["help"])
    p.add_argument("--json", default=None, help="write the table as JSON here")
    p.add_argument("--grid", default=None, help="write a PNG grid of samples with their prompts here")
    p.add_argument("--grid-size", type=int, default=48, help="images in the grid")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="the network's precision with --checkpoint (auto: bf16 where native; a --run uses its model_options)",
    )
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
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        # a write outside vgpo's own writers (which name the file themselves)
        where = f"{err.filename}: " if err.filename else ""
        print(f"vgpo: error: {where}no space left on device", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vgpo: interrupted; checkpoints already written are intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
