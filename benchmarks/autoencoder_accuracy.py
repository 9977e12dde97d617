"""Does the world's reward still read the latent autoencoder's reconstructions correctly?

    python benchmarks/autoencoder_accuracy.py --ae runs/ae-shapes [--scenes 1000] [--split test] [--seed 0] [--threads 2]

Renders scenes from random metadata of ``--split`` (test by default, as the first figures in
docs/learning-study.md section 5; val to choose an autoencoder without the test split), with layout seeds
as ``shapes_detector_accuracy.py`` draws them (not the trainer's), round-trips them through the
autoencoder's latents (``encode_latents`` then ``decode_latents``, what a latent-space model's samples go
through before a reward) and reports the reconstruction error and the world's headline score (Shapes: GenEval strict) on the renders and on the
reconstructions; for Shapes also the share of violated metadata still rejected on reconstructions, and
which detected objects the round trip changes: per class, how many of the renders' objects are missing
from their reconstruction's detections and how many detections are new (a square read as a circle counts
once in each); and for the rendered squares, the squareness the detector reads on their reconstruction
(kept and lost, against its threshold) and whether a lost square's box grew or shrank.
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import numpy as np
import torch

from vgpo.models.autoencoder import load_autoencoder
from vgpo.worlds import SPLITS, get_world


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Pixels shared by two boxes (x0, y0, x1, y1) with exclusive ends."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae", required=True)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--split", default="test", choices=SPLITS, help="prompt split whose metadata is rendered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ae = load_autoencoder(args.ae)
    world = get_world(ae.cfg.world)
    rng = random.Random(args.seed)
    pool = world.load_prompts(world.prompt_file(args.split))
    metas = [rng.choice(pool) for _ in range(args.scenes)]
    images = torch.stack([world.render(m, args.seed * 1_000_003 + i) for i, m in enumerate(metas)])
    start = time.perf_counter()
    with torch.no_grad():
        recon = torch.cat([ae.decode_latents(ae.encode_latents(c)) for c in images.split(256)])
    codec_ms = (time.perf_counter() - start) / args.scenes * 1e3
    err = (recon - images).abs()
    print(f"scenes: {args.scenes} of the {world.name} {args.split} split's metadata")
    print(
        f"reconstruction: MSE {err.pow(2).mean().item():.5f}, mean |error| {err.mean().item():.4f}, "
        f"pixels off by > 0.1: {(err.amax(1) > 0.1).float().mean().item():.3%}"
    )
    print(f"encode + decode: {codec_ms:.3f} ms/image")
    on_renders, on_recon = (world.evaluate(x, metas)[world.headline] for x in (images, recon))
    print(f"{world.headline} on renders: {on_renders:.4f}; on reconstructions: {on_recon:.4f}")
    if world.name == "shapes":
        from vgpo.worlds.shapes.detect import SQUARE_MIN_SCORE, detect, unmatched
        from vgpo.worlds.shapes.prompts import perturb
        from vgpo.worlds.shapes.score import score

        on_renders_found, on_recon_found = detect(images), detect(recon)
        total, lost, gained = collections.Counter(), collections.Counter(), collections.Counter()
        width_total, width_lost = collections.Counter(), collections.Counter()  # (class, box width in px)
        for on_render, on_recon in zip(on_renders_found, on_recon_found):
            missing, new = unmatched(on_render, on_recon)
            total.update(d.cls for d in on_render)
            width_total.update((d.cls, d.bbox[2] - d.bbox[0]) for d in on_render)
            lost.update(d.cls for d in missing)
            width_lost.update((d.cls, d.bbox[2] - d.bbox[0]) for d in missing)
            gained.update(d.cls for d in new)
        print(
            "objects the round trip changes, per class (missing of the renders' / new): "
            + ", ".join(f"{c} {lost[c]} of {total[c]} / {gained[c]}" for c in sorted(total | gained))
        )
        for cls in sorted(lost):
            print(
                f"  {cls}s missing, by box width: "
                + ", ".join(
                    f"{w} px {width_lost[cls, w]} of {n}" for (c, w), n in sorted(width_total.items()) if c == cls
                )
            )

        # Each rendered square against the reconstruction's same-colour detection whose box overlaps it
        # most: is the square lost near the detector's threshold, and how did its box change?
        kept_scores, lost_squares = [], []
        for on_render, on_recon in zip(on_renders_found, on_recon_found):
            for d in (d for d in on_render if d.cls == "square"):
                best = max(
                    (r for r in on_recon if r.color == d.color), key=lambda r: _overlap(r.bbox, d.bbox), default=None
                )
                if best is None or _overlap(best.bbox, d.bbox) == 0:
                    lost_squares.append(("gone", float("nan"), 0))
                elif best.cls == "square":
                    kept_scores.append(best.squareness)
                else:
                    grown = (best.bbox[2] - best.bbox[0] + best.bbox[3] - best.bbox[1]) - (
                        d.bbox[2] - d.bbox[0] + d.bbox[3] - d.bbox[1]
                    )
                    lost_squares.append((best.cls, best.squareness, grown))
        lost_scores = np.array([s for _, s, _ in lost_squares if s == s])  # squares read as another class
        grown = np.array([g for _, s, g in lost_squares if s == s])
        if kept_scores and lost_scores.size:
            print(
                f"squares kept: {len(kept_scores)}, squareness on reconstruction min {min(kept_scores):.3f}, "
                f"median {np.median(kept_scores):.3f} (threshold {SQUARE_MIN_SCORE})"
            )
            read_as = collections.Counter(c for c, _, _ in lost_squares)
            print(
                f"squares lost: {len(lost_squares)} ({', '.join(f'{k} {v}' for k, v in read_as.items())}); "
                f"their squareness quartiles {np.percentile(lost_scores, [25, 50, 75]).round(3).tolist()}, "
                f"within 0.02 of the threshold {(lost_scores >= SQUARE_MIN_SCORE - 0.02).mean():.0%}; "
                f"box width + height grew {(grown > 0).mean():.0%}, shrank {(grown < 0).mean():.0%}"
            )

        strict, _ = score(recon, metas)
        rejected, _ = score(recon, [perturb(m, rng) for m in metas])
        print(
            f"strict = 1 on reconstructions: {strict.mean().item():.2%}; "
            f"strict = 0 on violated metadata: {(rejected == 0).float().mean().item():.2%}"
        )


if __name__ == "__main__":
    main()
