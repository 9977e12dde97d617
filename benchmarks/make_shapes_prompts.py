"""Regenerate the shapes world's prompt files (deterministic: same seed, same bytes).

    python benchmarks/make_shapes_prompts.py   # writes src/vgpo/worlds/shapes/data/{train,test,val,train_minus_val}.jsonl

The train/test split (held-out combinations, test proportions) is documented in
``vgpo.worlds.shapes.prompts.make_splits``; the validation split carved from train (``val``, and
``train_minus_val``, what a run judged on val trains on) in ``make_val_split``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from vgpo.worlds.shapes.prompts import make_splits, make_val_split

DATA = Path(__file__).resolve().parents[1] / "src" / "vgpo" / "worlds" / "shapes" / "data"


def dumps(records: list[dict]) -> str:
    """One JSON object per line, keys in GenEval's order (tag, include, exclude, prompt)."""
    return "".join(json.dumps(r) + "\n" for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument("--val-seed", type=int, default=1, help="seed of the validation split carved from train")
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    train, test = make_splits(args.seed)
    train_minus_val, val = make_val_split(train, args.val_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", train), ("test", test), ("val", val), ("train_minus_val", train_minus_val)):
        (args.out / f"{name}.jsonl").write_text(dumps(records), encoding="utf-8")
        tags = Counter(r["tag"] for r in records)
        print(f"{name}: {len(records)} lines, {len({r['prompt'] for r in records})} distinct prompts; {dict(tags)}")


if __name__ == "__main__":
    main()
