"""How well the OCR judge reads clean renders of the text world, and how fast.

    python benchmarks/ocr_render_accuracy.py [--split test|train] [--seeds 1] [--threads 2] [--limit N]

Renders every word of the split (one render per word and seed), scores the batch with the ``ocr``
reward in batches of 64 and prints the exact-match rate, the mean reward, the misread words and the
reward's time per image (engine load excluded). The text world is designed for >= 97% exact here.
"""

from __future__ import annotations

import argparse
import time

import torch

from vgpo.rewards import build
from vgpo.rewards.ocr import normalize
from vgpo.worlds import get_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--seeds", type=int, default=1, help="renders per word")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only")
    args = parser.parse_args()

    world = get_world("text")
    prompts = world.load_prompts(world.test_file if args.split == "test" else world.train_file)[: args.limit]
    items = [(m, seed) for seed in range(args.seeds) for m in prompts]
    images = torch.stack([world.render(m, 1000 * seed + i) for i, (m, seed) in enumerate(items)])
    reward = build("ocr", threads=args.threads, batch_size=args.batch)
    reward(images[:2], [m["prompt"] for m, _ in items[:2]], [m for m, _ in items[:2]])  # load the engine

    scores, texts, elapsed = [], [], 0.0
    for start in range(0, len(items), args.batch):
        chunk = items[start : start + args.batch]
        t0 = time.perf_counter()
        scores.append(
            reward(images[start : start + args.batch], [m["prompt"] for m, _ in chunk], [m for m, _ in chunk])
        )
        elapsed += time.perf_counter() - t0
        texts += reward.last_texts
    scores_t = torch.cat(scores)
    misread = [(m["text"], t) for (m, _), t in zip(items, texts) if normalize(t) != normalize(m["text"])]
    exact = 1 - len(misread) / len(items)
    print(
        f"split={args.split} renders={len(items)} canvas={world.image_size[0]}x{world.image_size[1]} "
        f"mode={reward.resolve_mode(*world.image_size)}"
    )
    print(
        f"exact={exact:.4f} mean_reward={scores_t.mean().item():.4f} "
        f"ms_per_image={1000 * elapsed / len(items):.1f} (batch {args.batch}, threads {args.threads or 'all'})"
    )
    if misread:
        print("misread (target, read):", ", ".join(f"{a}->{b!r}" for a, b in misread[:30]))


if __name__ == "__main__":
    main()
