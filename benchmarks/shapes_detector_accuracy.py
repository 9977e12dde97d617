"""How well the shapes detector judges renders, and how fast the reward is.

    python benchmarks/shapes_detector_accuracy.py [--scenes 2000] [--seed 0] [--noise 0.005 0.01 0.02]

Renders scenes from random test metadata and reports: the strict score on the renders (should be 1),
the strict score against a perturbed metadata each scene violates (should be 0), render time, and the
reward's throughput at RL batch sizes. ``--noise`` also scores the renders with independent Gaussian noise
of each standard deviation added to every pixel value (then clipped to [0, 1]): how much imprecision in a
sample, too small to see, the detector tolerates before it misreads an object.
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import torch

from vgpo.rewards import build
from vgpo.worlds.shapes import WORLD
from vgpo.worlds.shapes.detect import detect, unmatched
from vgpo.worlds.shapes.prompts import perturb
from vgpo.worlds.shapes.score import evaluate, format_table, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, nargs="*", default=[], help="pixel noise standard deviations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    test = WORLD.load_prompts(WORLD.test_file)
    metas = [rng.choice(test) for _ in range(args.scenes)]
    violated = [perturb(m, rng) for m in metas]

    start = time.perf_counter()
    images = torch.stack([WORLD.render(m, args.seed * 1_000_003 + i) for i, m in enumerate(metas)])
    render_ms = (time.perf_counter() - start) / args.scenes * 1e3

    strict, partial = score(images, metas)
    rejected, _ = score(images, violated)
    print(format_table(evaluate(images, metas)))
    print(f"\nscenes: {args.scenes}")
    print(f"strict = 1 on renders:             {strict.mean().item():.2%}  (mean partial {partial.mean().item():.4f})")
    print(f"strict = 0 on violated metadata:   {(rejected == 0).float().mean().item():.2%}")
    print(f"render:                            {render_ms:.3f} ms/image")
    for i in torch.nonzero(strict < 1).flatten()[:5].tolist():
        print(
            f"  missed: {metas[i]['prompt']!r} -> {[(d.cls, d.color, d.center) for d in detect(images[i : i + 1])[0]]}"
        )
    for i in torch.nonzero(rejected > 0).flatten()[:5].tolist():
        print(f"  accepted violation: {violated[i]['prompt']!r} on a render of {metas[i]['prompt']!r}")
    noise = torch.Generator().manual_seed(args.seed)
    for sigma in args.noise:
        noisy = (images + sigma * torch.randn(images.shape, generator=noise)).clamp(0, 1)
        noisy_strict, _ = score(noisy, metas)
        changed = collections.Counter(
            d.cls for clean, read in zip(detect(images), detect(noisy)) for d in unmatched(clean, read)[0]
        )
        print(
            f"strict = 1 on renders + noise {sigma}: {noisy_strict.mean().item():.2%}; objects misread, per class: "
            + ", ".join(f"{c} {changed[c]}" for c in sorted(changed))
        )

    for name in ("geneval-shapes", "geneval-shapes-strict"):
        reward = build(name)
        for batch in (64, 640):
            chunk, prompts = images[:batch], [m["prompt"] for m in metas[:batch]]
            reward(chunk, prompts, metas[:batch])
            repeats = max(1, 2000 // batch)
            start = time.perf_counter()
            for _ in range(repeats):
                reward(chunk, prompts, metas[:batch])
            rate = repeats * batch / (time.perf_counter() - start)
            print(f"reward {name} batch {batch}: {rate:,.0f} images/s (1 thread)")


if __name__ == "__main__":
    main()
