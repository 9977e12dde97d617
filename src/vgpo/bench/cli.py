"""``vgpo bench``: run a benchmark suite, and ``vgpo bench train-encoder`` for its quality monitor."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from vgpo.errors import VgpoError


def _command_line() -> str:
    return (
        shlex.join(["vgpo", *sys.argv[1:]])
        if sys.argv and Path(sys.argv[0]).name in ("vgpo", "__main__.py")
        else shlex.join(sys.argv)
    )


def _cmd_bench(args: argparse.Namespace) -> None:
    from .runner import describe, run_suite
    from .suites import expand, get_suite, select

    suite = get_suite(args.suite)
    out = Path(args.out or f"runs/bench-{args.suite}")
    if args.dry_run:
        plan = expand(suite, out, args.threads, args.optional)
        print("\n".join(describe(plan, select(plan.runs, args.only), args.jobs)))
        return
    outcome = run_suite(
        suite,
        out,
        only=args.only,
        threads=args.threads,
        use_quality=not args.no_quality,
        projection=not args.no_projection,
        report_only=args.report_only,
        command=_command_line(),
        jobs=args.jobs,
        optional=args.optional,
    )
    print(f"report: {outcome.report}\nresults: {outcome.results}")
    if outcome.failed:
        raise VgpoError(
            f"{len(outcome.failed)} failed: "
            + "; ".join(f"{k}: {v}" for k, v in outcome.failed.items())
            + " (see bench_error.txt in the run folders; rerun the same command to retry them)"
        )


def _cmd_train_encoder(args: argparse.Namespace) -> None:
    from .quality import train_encoder

    train_encoder(
        args.world,
        args.encoder_out or f"checkpoints/{args.world}-encoder",
        steps=args.steps,
        batch_size=args.batch_size,
        renders=args.renders,
        lr=args.lr,
        seed=args.seed,
        threads=args.encoder_threads,
    )


def add_commands(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark suites: Flow-GRPO vs VGPO and ablations, results JSON + BENCHMARKS.md",
        description="Run a suite of (task, algorithm, seed) RL runs from the shipped base checkpoints; "
        "finished runs are never re-run, killed runs resume from their checkpoint. "
        "Writes results.json, BENCHMARKS.md and PNG plots into --out.",
    )
    p.add_argument("--suite", default="quick", help="quick (~15 min, smoke) or full (<= ~2 h)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench-<suite>)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TASK[/ALGO[/SEED]]",
        help="run only matching runs (wildcards; repeatable), e.g. shapes/vgpo/0, '*/grpo', 'shapes/vgpo*'; "
        "the report covers every finished run of the suite",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for every run (0: torch's default; with --jobs: the cores split over the jobs)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained side by side, each in its own process (per-run output in <out>/logs/)",
    )
    p.add_argument(
        "--optional",
        action="store_true",
        help="also the suite's optional rows (full suite: the flow-matching objectives nft and awm, from "
        "configs/<world>-{nft,awm}.yaml under the same budget); pass it to --report-only too",
    )
    p.add_argument("--no-quality", action="store_true", help="skip the FD/diversity quality monitor")
    p.add_argument("--no-projection", action="store_true", help="skip the projection-accuracy check")
    p.add_argument("--report-only", action="store_true", help="run nothing; rebuild results.json, BENCHMARKS.md, plots")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their state and a rough time estimate")
    p.set_defaults(func=_cmd_bench)
    bench_sub = p.add_subparsers(dest="bench_command", metavar="{train-encoder}")

    e = bench_sub.add_parser("train-encoder", help="train the quality monitor's feature encoder on a world's renders")
    e.add_argument("--world", default="shapes", help="world whose train-prompt renders it learns (shapes, text)")
    e.add_argument(
        "--out", dest="encoder_out", default=None, help="output folder (default checkpoints/<world>-encoder)"
    )
    e.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    e.add_argument("--batch-size", type=int, default=128, help="images per step")
    e.add_argument("--renders", type=int, default=4096, help="rendered training images")
    e.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    e.add_argument("--seed", type=int, default=0, help="seed of renders and initialisation")
    e.add_argument("--threads", dest="encoder_threads", type=int, default=0, help="torch CPU threads (0: default)")
    e.set_defaults(func=_cmd_train_encoder)
