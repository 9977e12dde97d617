"""Samples (and training seconds) a recipe needs to reach another recipe's final held-out score.

    python benchmarks/sample_efficiency.py CURVES_DIR REF_DIR [--names A B] [--gain 0.10 ...] [--out FILE.md]

Both folders are written by ``benchmarks/demo_seeds.py --kinds run --out``. CURVES_DIR's runs evaluated
during training (``--set eval_every=N``), so each ``run-seed<S>/eval/`` holds a held-out curve; REF_DIR's
runs give only their final score. Seeds are paired as in ``paired_recipes.py`` (same seed, same base score).

The target follows the paper's sample-efficiency claim: the reference's final score. Per seed it is that
seed's base plus the reference's *mean* gain over all its seeds (one seed's gain is mostly evaluation noise),
and, beside it, the paired target: the reference's own final score on that seed. ``--gain G`` adds targets
of base + G. Samples to reach = the first evaluation at or above the target (``vgpo.bench.stats
.epochs_to_reach`` without interpolation: a conservative figure on a coarse curve), with the interpolated
crossing beside it; a curve that never reaches the target is censored (``>N``). The ratio is the
reference's samples (its whole budget: its own curve is not needed to define its final score) over the
curve's samples to reach, so above 1 means fewer samples. Training seconds to reach sum the run's
``time/epoch_s`` over the epochs before that evaluation (evaluations excluded), against the reference
run's summed ``time/epoch_s`` on the same seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_recipes import PairingError, load_runs, pair  # noqa: E402
from vgpo.bench.stats import epochs_to_reach  # noqa: E402
from vgpo.train.run_folder import eval_files  # noqa: E402


def samples_per_epoch(folder: Path) -> tuple[int, int]:
    """(samples an epoch, samples in all) of the preset a demo_seeds.py folder trained."""
    preset = json.loads((folder / "demo_seeds.json").read_text())["preset"]
    per_epoch = int(preset["prompts_per_epoch"]) * int(preset["group_size"])
    return per_epoch, int(preset["epochs"]) * per_epoch


def curve(run: Path, headline: str) -> tuple[list[int], list[float]]:
    """(epochs, held-out headline scores) of a run's evaluations, in epoch order."""
    files = eval_files(run)
    if len(files) < 3:  # the base's and the final one: no evaluation during training
        raise PairingError(
            f"{run}: {len(files)} evaluations; a curve needs evaluations during training (eval_every > 0)"
        )
    epochs = [int(path.stem.removeprefix("epoch_")) for path in files]
    return epochs, [float(json.loads(path.read_text())[headline]) for path in files]


def epoch_seconds(run: Path) -> list[float] | None:
    """Each training epoch's seconds (``time/epoch_s`` in metrics.jsonl), or None without the file."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as err:
            raise PairingError(f"{path}, line {number}: not JSON ({err.msg})") from None
    return [row["time/epoch_s"] for row in sorted(rows, key=lambda r: r["epoch"]) if "time/epoch_s" in row]


def reach(epochs: list[int], scores: list[float], target: float, per_epoch: int, seconds: list[float] | None) -> dict:
    first = epochs_to_reach(epochs, scores, target, interpolate=False)
    crossing = epochs_to_reach(epochs, scores, target, interpolate=True)
    if first["epochs"] is None:
        return {"samples": None, "bound": first["bound"] * per_epoch, "interpolated": None, "seconds": None}
    done = int(first["epochs"])
    return {
        "samples": done * per_epoch,
        "bound": None,
        "interpolated": crossing["epochs"] * per_epoch,
        "seconds": sum(seconds[:done]) if seconds is not None and len(seconds) >= done else None,
    }


def rows(curves_dir: Path, ref_dir: Path, gains: list[float]) -> tuple[list[dict], dict]:
    ref_runs = load_runs(ref_dir)
    pairs = pair(load_runs(curves_dir), ref_runs)
    # over every seed the reference ran, not only the paired ones: the target should not move with the curves' seeds
    ref_gain = statistics.fmean(r["after"] - r["base"] for r in ref_runs.values())
    per_epoch, ref_samples = samples_per_epoch(curves_dir)[0], samples_per_epoch(ref_dir)[1]
    out = []
    for p in pairs:
        seed, base = p["seed"], p["a"]["base"]
        epochs, scores = curve(curves_dir / f"run-seed{seed}", p["a"]["headline"])
        if abs(scores[-1] - p["a"]["after"]) > 1e-9:
            raise PairingError(f"seed {seed}: the curve's last point is not the run's final score")
        seconds = epoch_seconds(curves_dir / f"run-seed{seed}")
        ref_seconds = epoch_seconds(ref_dir / f"run-seed{seed}")
        targets = {"mean": base + ref_gain, "paired": p["b"]["after"], **{f"{g:+.2f}": base + g for g in gains}}
        out.append(
            {
                "seed": seed,
                "base": base,
                "curve": [(e * per_epoch, s) for e, s in zip(epochs, scores)],
                "ref_after": p["b"]["after"],
                "ref_seconds": sum(ref_seconds) if ref_seconds else None,
                "reach": {k: {"target": t, **reach(epochs, scores, t, per_epoch, seconds)} for k, t in targets.items()},
            }
        )
    info = {"ref_gain": ref_gain, "ref_seeds": sorted(ref_runs), "ref_samples": ref_samples, "per_epoch": per_epoch}
    return out, info


def _samples(r: dict) -> str:
    if r["samples"] is None:
        return f">{r['bound']:,.0f}"
    return f"{r['samples']:,} ({r['interpolated']:,.0f})"


def _ratio(r: dict, ref_samples: int) -> str:
    # a censored curve needs more than its budget: the ratio is below ref / bound
    return f"<{ref_samples / r['bound']:.2f}" if r["samples"] is None else f"{ref_samples / r['samples']:.2f}"


def table(out: list[dict], info: dict, names: tuple[str, str]) -> str:
    na, nb = names
    keys = list(out[0]["reach"])
    cells = ["seed", "base", f"{na}: held-out score at samples"]
    for k in keys:
        label = {"mean": f"{nb}'s mean final", "paired": f"{nb}'s final, same seed"}.get(k, f"base {k}")
        cells += [f"to {label}: target, samples (interpolated)", "ratio", "train s to reach / " + nb]
    lines = ["| " + " | ".join(cells) + " |", "|---" * len(cells) + "|"]
    for row in out:
        cells = [str(row["seed"]), f"{row['base']:.3f}", ", ".join(f"{n:,}: {s:.3f}" for n, s in row["curve"])]
        for k in keys:
            r = row["reach"][k]
            wall = "n/a"
            if r["seconds"] is not None and row["ref_seconds"]:
                wall = f"{r['seconds']:,.0f} / {row['ref_seconds']:,.0f}"
            cells += [f"{r['target']:.3f}: {_samples(r)}", _ratio(r, info["ref_samples"]), wall]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{nb}: {info['ref_samples']:,} samples, mean gain {info['ref_gain']:+.3f} over seeds "
        f"{', '.join(str(seed) for seed in info['ref_seeds'])}. Ratio = {nb}'s samples / {na}'s samples to reach "
        "(above 1: fewer samples; '<' when the curve never reaches the target).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", type=Path, help="demo_seeds.py folder whose runs evaluated during training")
    parser.add_argument("ref", type=Path, help="demo_seeds.py folder of the reference recipe (its final scores)")
    parser.add_argument("--names", nargs=2, default=("A", "B"), help="names of the two recipes")
    parser.add_argument("--gain", type=float, nargs="*", default=[], help="also the samples to reach base + GAIN")
    parser.add_argument("--out", type=Path, help="also write the table (FILE.md) and the numbers (FILE.json)")
    args = parser.parse_args()
    try:
        out, info = rows(args.curves, args.ref, args.gain)
    except PairingError as err:
        raise SystemExit(f"sample_efficiency: error: {err}") from None
    text = table(out, info, tuple(args.names))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({**info, "rows": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
