"""Two recipes on the same seeds: which one the held-out score favours, by how much, and where.

    python benchmarks/paired_recipes.py A_DIR B_DIR [--names A B] [--out FILE.md]

A_DIR and B_DIR are folders written by ``benchmarks/demo_seeds.py --out`` (their ``demo_seeds.json``,
with ``--kinds run`` or both kinds; only the runs are read). The seeds present in both are paired: a seed
fixes the evaluation's prompts and noise, so the two runs of one seed must read the same base score; a
mismatch (different evaluation settings, or a different base) is an error naming the seed.

Per seed: each recipe's score after RL and gain over the base, A - B in units of the SE of the difference
(the two SEs combined as if the evaluations were independent: they share their noise and prompts, so the
true SE of the difference is smaller and this figure is conservative), and, where the world reports them,
each tag's strict score after RL and the hacking monitor (extra objects). The last line is the mean over
seeds, with the SE of the mean difference taken from the seeds' spread (sd / sqrt(n); none for one seed),
then Student's paired t-test of that mean against 0 (two seeds or more).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import scipy.stats

EXTRA = "monitor/extra_objects"


class PairingError(ValueError):
    pass


def load_runs(folder: Path) -> dict[int, dict]:
    path = folder / "demo_seeds.json"
    if not path.is_file():
        raise PairingError(f"{path}: not found (expected a `benchmarks/demo_seeds.py --out` folder)")
    runs: dict[int, dict] = {}
    for row in json.loads(path.read_text())["rows"]:
        if row.get("run"):
            if row["seed"] in runs:
                raise PairingError(f"{path}: seed {row['seed']} appears twice")
            runs[row["seed"]] = row["run"]
    return runs


def _tags(pairs: list[dict]) -> list[str]:
    """The per-tag strict scores every seed of both recipes reports, besides the headline (none on text;
    a run from before a metric existed lacks it)."""
    first = pairs[0]["a"]
    return [
        k.removesuffix("/strict")
        for k in first["final"]
        if k.endswith("/strict") and k != first["headline"] and all(k in p[r]["final"] for p in pairs for r in "ab")
    ]


def pair(a: dict[int, dict], b: dict[int, dict]) -> list[dict]:
    """One entry per seed both folders hold: the two results, their difference and its SE."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise PairingError(f"no seed in common (A: {sorted(a)}, B: {sorted(b)})")
    pairs = []
    for seed in seeds:
        ra, rb = a[seed], b[seed]
        if ra["headline"] != rb["headline"]:
            raise PairingError(f"seed {seed}: headlines differ ({ra['headline']} vs {rb['headline']})")
        if abs(ra["base"] - rb["base"]) > 1e-9:
            raise PairingError(
                f"seed {seed}: base scores differ ({ra['base']:.4f} vs {rb['base']:.4f}), so the two evaluations "
                "are not paired (different evaluation settings or base checkpoint)"
            )
        diff = ra["after"] - rb["after"]
        pairs.append({"seed": seed, "a": ra, "b": rb, "diff": diff, "diff_se": math.hypot(ra["se"], rb["se"])})
    return pairs


def table(pairs: list[dict], names: tuple[str, str]) -> str:
    na, nb = names
    tags = _tags(pairs)
    monitor = all(EXTRA in p[k]["final"] and EXTRA in p[k]["monitor"] for p in pairs for k in "ab")
    cells = ["seed", "base", f"{na} after (gain)", f"{nb} after (gain)", f"{na} - {nb} (in SE of the difference)"]
    cells += [f"{t} {na} / {nb}" for t in tags]
    if monitor:
        cells.append(f"extra objects: base -> {na} / {nb}")
    lines = ["| " + " | ".join(cells) + " |", "|---" * len(cells) + "|"]
    for p in pairs:
        a, b = p["a"], p["b"]
        row = [
            str(p["seed"]),
            f"{a['base']:.3f}",
            f"{a['after']:.3f} ({a['after'] - a['base']:+.3f})",
            f"{b['after']:.3f} ({b['after'] - b['base']:+.3f})",
            f"{p['diff']:+.3f} ({p['diff'] / p['diff_se']:+.1f} SE)" if p["diff_se"] > 0 else f"{p['diff']:+.3f}",
        ]
        row += [f"{a['final'][t + '/strict']:.2f} / {b['final'][t + '/strict']:.2f}" for t in tags]
        if monitor:
            base_extra = a["monitor"][EXTRA][0]
            row.append(f"{base_extra:.2f} -> {a['final'][EXTRA]:.2f} / {b['final'][EXTRA]:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    diffs = [p["diff"] for p in pairs]
    mean = statistics.fmean(diffs)
    spread = f" ± {_se_over_seeds(diffs):.3f} (SE over seeds)" if len(diffs) > 1 else ""
    gains = {k: statistics.fmean(p[k]["after"] - p[k]["base"] for p in pairs) for k in ("a", "b")}
    row = ["mean", "", f"({gains['a']:+.3f})", f"({gains['b']:+.3f})", f"{mean:+.3f}{spread}"]
    row += [
        f"{statistics.fmean(p['a']['final'][t + '/strict'] for p in pairs):.2f} / "
        f"{statistics.fmean(p['b']['final'][t + '/strict'] for p in pairs):.2f}"
        for t in tags
    ]
    if monitor:
        row.append("")
    lines.append("| " + " | ".join(row) + " |")
    test = paired_t(diffs)
    if test is not None:
        t, p = test
        lines += ["", f"Paired t over {len(diffs)} seeds: t = {t:+.2f} (df {len(diffs) - 1}), p = {p:.3f} two-sided."]
    return "\n".join(lines)


def paired_t(diffs: list[float]) -> tuple[float, float] | None:
    """Student's paired t-test of the mean difference against 0: (t, two-sided p); None below two seeds
    or when every seed differs by the same amount (no spread, no test)."""
    if len(diffs) < 2 or _se_over_seeds(diffs) == 0:
        return None
    t = statistics.fmean(diffs) / _se_over_seeds(diffs)
    return t, float(2 * scipy.stats.t.sf(abs(t), len(diffs) - 1))


def _se_over_seeds(diffs: list[float]) -> float:
    """The SE of the mean difference from the seeds' spread: sd / sqrt(n) (two seeds or more)."""
    return statistics.stdev(diffs) / math.sqrt(len(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the first recipe's demo_seeds.py folder")
    parser.add_argument("b", type=Path, help="the second recipe's demo_seeds.py folder")
    parser.add_argument("--names", nargs=2, default=("A", "B"), help="column names of the two recipes")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    try:
        text = table(pair(load_runs(args.a), load_runs(args.b)), tuple(args.names))
    except PairingError as err:
        raise SystemExit(f"paired_recipes: error: {err}") from None
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
