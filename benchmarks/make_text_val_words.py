"""Regenerate the text world's validation word lists from its train list (deterministic: same seed, same bytes).

    python benchmarks/make_text_val_words.py   # writes src/vgpo/worlds/text/data/{val,train_minus_val}_words.txt

The draw is documented in ``vgpo.worlds.text.prompts.make_val_split``; train_words.txt and
test_words.txt are not touched.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from vgpo.worlds.text.prompts import make_val_split

DATA = Path(__file__).resolve().parents[1] / "src" / "vgpo" / "worlds" / "text" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--data", type=Path, default=DATA, help="folder with train_words.txt; the lists are written here"
    )
    args = parser.parse_args()
    train = [w.strip() for w in (args.data / "train_words.txt").read_text(encoding="utf-8").splitlines() if w.strip()]
    rest, val = make_val_split(train, args.seed)
    for name, words in (("val_words", val), ("train_minus_val_words", rest)):
        (args.data / f"{name}.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
        print(f"{name}: {len(words)} words; lengths {dict(sorted(Counter(len(w) for w in words).items()))}")


if __name__ == "__main__":
    main()
