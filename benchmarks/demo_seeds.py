"""Does `vgpo demo` learn? Its preset on several seeds, each beside its shuffled-advantage control.

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out runs/demo-seeds] [--set field=value ...]
    python benchmarks/demo_seeds.py --config configs/text-nft-vgpo.yaml ...   # any preset, any world
    # on two cores: two processes at one thread each share one --out, then --keep assembles the table
    python benchmarks/demo_seeds.py --seeds 0 --set threads=1 --out D &
    python benchmarks/demo_seeds.py --seeds 1 --set threads=1 --out D; wait
    python benchmarks/demo_seeds.py --seeds 2 --kinds run --set threads=1 --out D &
    python benchmarks/demo_seeds.py --seeds 2 --kinds control --set threads=1 --out D; wait
    python benchmarks/demo_seeds.py --seeds 0 1 2 --keep --set threads=1 --out D
    # a killed pair continues from its checkpoints with the same command and --resume

For each seed, trains the demo preset (``configs/shapes-vgpo-demo.yaml``, or ``--config``, overridden by
``--set``) and its control: the same run with every epoch's advantages permuted across its samples
(``shuffled_control.shuffling_hooks``), so the control has the run's prompts, noise and update size but
no information from the reward. Prints one row per seed: the world's held-out headline score of the base
and after RL with its standard error (``World.standard_error``: on Shapes binomial per tag, on text the
OCR scores' spread over the images), the control's, the gain, the gap to the control in units of the
standard error of the difference, on Shapes the hacking monitor (the fraction of images with more objects
than the prompt asks for, base -> run / control: a reward that counts objects as minimums can be gamed
by duplicating them), and each run's wall time (kept beside the run in
``wall_s.txt``, so a ``--keep`` assembly reports it too); writes the same table to
``<out>/demo_seeds.md`` and the raw numbers to ``<out>/demo_seeds.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from shuffled_control import shuffling_hooks  # noqa: E402
from vgpo.config import from_dict, load_yaml, parse_overrides  # noqa: E402
from vgpo.errors import VgpoError  # noqa: E402
from vgpo.train import TrainConfig, train  # noqa: E402
from vgpo.train.cli import DEMO_PRESET  # noqa: E402
from vgpo.train.run_folder import check_kept, eval_files, has_checkpoint  # noqa: E402
from vgpo.worlds import get_world  # noqa: E402

WALL_FILE = "wall_s.txt"


def _finished(run: Path, epochs: int) -> bool:
    return any(path.stem == f"epoch_{epochs:04d}" for path in eval_files(run))


def _evals(run: Path) -> tuple[dict, dict]:
    evals = eval_files(run)
    return json.loads(evals[0].read_text()), json.loads(evals[-1].read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument("--config", type=Path, default=DEMO_PRESET, help="the preset to train (default: the demo's)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a preset field")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=["run", "control"],
        default=["run", "control"],
        help="which of each seed's pair to train and report (split a pair across two processes)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="reuse a run folder that already holds a finished run of the same seed and settings",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run from its last checkpoint (its wall time is then reported as n/a); "
        "a finished run is assembled with --keep",
    )
    args = parser.parse_args()
    data = {**load_yaml(args.config), **parse_overrides(args.set)}
    rows = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        for kind in args.kinds:
            cfg = from_dict(TrainConfig, {**data, "seed": seed, "out": str(args.out / f"{kind}-seed{seed}")}, "")
            world = get_world(cfg.world)
            started = time.time()
            kept = args.keep and _finished(Path(cfg.out), cfg.epochs)
            if kept:
                check_kept(Path(cfg.out), cfg)  # a kept run must be the run this call asks for
                out = cfg.out
            else:
                # The control's permutation is a function of (seed, epoch), so a resumed control is the same run.
                resume = args.resume and has_checkpoint(Path(cfg.out))
                hooks = shuffling_hooks(seed) if kind == "control" else None
                # A wall time left in the folder by an earlier run is not this run's (a resumed run gets none).
                (Path(cfg.out) / WALL_FILE).unlink(missing_ok=True)
                out = train(cfg, hooks=hooks, resume=resume, overwrite=not resume)
                if not resume:  # a resumed run's first part was not timed
                    (Path(out) / WALL_FILE).write_text(f"{time.time() - started:.1f}\n")
            before, after = _evals(Path(out))
            wall = Path(out) / WALL_FILE
            row[kind] = {
                "headline": world.headline,
                "base": before[world.headline],
                "after": after[world.headline],
                "se": world.headline_standard_error(after),
                "wall_s": float(wall.read_text()) if wall.exists() else None,
                "final": after,
                "monitor": {
                    k: [before.get(k), after.get(k)]
                    for k in ("monitor/extra_objects", "monitor/exact_scene")
                    if k in after  # Shapes evaluations carry the hacking monitor, other worlds none
                },
            }
        rows.append(row)
        print(_line(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_seeds.json").write_text(json.dumps({"preset": data, "rows": rows}, indent=2) + "\n")
    table = [_header(rows[0]), *(_line(r) for r in rows)]
    (args.out / "demo_seeds.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


def _seconds(result: dict) -> str:
    return "n/a" if result["wall_s"] is None else f"{result['wall_s']:.0f}"


def _header(row: dict) -> str:
    first = row.get("run") or row.get("control")
    cells = ["seed", f"base {first['headline']}", "after RL ± SE", "gain", "control after ± SE"]
    cells += ["run - control (in SE of the difference)"]
    if _has_monitor(first):
        cells.append("extra objects: base -> run / control")
    cells.append("wall s (run, control)")
    return "| " + " | ".join(cells) + " |\n" + "|---" * len(cells) + "|"


def _has_monitor(result: dict) -> bool:
    return "monitor/extra_objects" in result["monitor"]


def _line(row: dict) -> str:
    run, ctl = row.get("run"), row.get("control")
    first = run or ctl
    cells = [str(row["seed"]), f"{first['base']:.3f}"]
    if run:
        cells += [f"{run['after']:.3f} ± {run['se']:.3f}", f"{run['after'] - run['base']:+.3f}"]
    else:
        cells += ["-", "-"]
    cells.append(f"{ctl['after']:.3f} ± {ctl['se']:.3f}" if ctl else "-")
    if run and ctl:
        gap = run["after"] - ctl["after"]
        cells.append(f"{gap:+.3f} ({gap / math.hypot(run['se'], ctl['se']):+.1f} SE)")
    else:
        cells.append("-")
    if _has_monitor(first):
        extra = [_share(r["monitor"]["monitor/extra_objects"][1]) if r else "-" for r in (run, ctl)]
        cells.append(f"{_share(first['monitor']['monitor/extra_objects'][0])} -> {extra[0]} / {extra[1]}")
    cells.append(", ".join(_seconds(r) if r else "-" for r in (run, ctl)))
    return "| " + " | ".join(cells) + " |"


def _share(value: float | None) -> str:
    # runs evaluated before the monitor existed have no such metric
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    try:
        main()
    except VgpoError as err:  # one line, as the vgpo CLI prints it
        sys.exit(f"demo_seeds: error: {err}")
