"""Did two runs compute the same numbers? For a change meant to alter only how the work is done (speed), not
what it computes: the per-epoch metrics must be equal in every key but the timings, the held-out evaluations
equal, and the checkpoint tensors (where both folders kept them) bit-identical.

    python benchmarks/same_run.py RUN_A RUN_B

Prints each difference and a summary line; exits 1 if anything but the timings differs. Compares the epochs both
runs reached (a run stopped early still compares), and says so when their lengths differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: Keys that measure the machine, not the computation.
TIMING_PREFIXES = ("time/", "perf/", "charts/samples_per_s")


def metric_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(a: Path, b: Path) -> list[str]:
    """Every difference between runs ``a`` and ``b`` outside the timings, one line each."""
    diffs = []
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    if len(rows_a) != len(rows_b):
        print(f"note: {len(rows_a)} and {len(rows_b)} metric rows; comparing the first {min(len(rows_a), len(rows_b))}")
    for ra, rb in zip(rows_a, rows_b):
        for key in sorted(set(ra) | set(rb)):
            if not key.startswith(TIMING_PREFIXES) and ra.get(key) != rb.get(key):
                diffs.append(f"metrics.jsonl epoch {ra.get('epoch')}: {key} {ra.get(key)!r} != {rb.get(key)!r}")
    for eval_a in sorted((a / "eval").glob("*.json")):
        eval_b = b / "eval" / eval_a.name
        if eval_b.is_file() and json.loads(eval_a.read_text()) != json.loads(eval_b.read_text()):
            diffs.append(f"eval/{eval_a.name} differs")
    for weights_a in sorted((a / "checkpoint").glob("*.safetensors")):
        weights_b = b / "checkpoint" / weights_a.name
        if weights_b.is_file() and weights_a.read_bytes() != weights_b.read_bytes():
            diffs.append(f"checkpoint/{weights_a.name} differs")
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    diffs = compare(args.run_a, args.run_b)
    for line in diffs:
        print(line)
    n_rows = min(len(metric_rows(args.run_a)), len(metric_rows(args.run_b)))
    n_evals = sum((args.run_b / "eval" / p.name).is_file() for p in (args.run_a / "eval").glob("*.json"))
    n_weights = sum(
        (args.run_b / "checkpoint" / p.name).is_file() for p in (args.run_a / "checkpoint").glob("*.safetensors")
    )
    verdict = "SAME" if not diffs else f"DIFFERENT ({len(diffs)} differences)"
    print(f"{verdict}: {n_rows} metric rows, {n_evals} evaluations, {n_weights} checkpoint files compared")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
