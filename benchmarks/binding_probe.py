"""Does a Shapes base read bindings? A diffusion classifier built from its denoiser.

    python benchmarks/binding_probe.py CHECKPOINT [CHECKPOINT ...] [--split train] [--scenes 256]

For each color_attr and position prompt of the split (repeated to ``--scenes`` renders a tag), the same
noisy image is denoised under the exact caption and under the caption with its binding exchanged
(``swap_binding``: colours swapped between the objects, the relation reversed). Prints, per tag and
noise level t (and t drawn logit-normal, as pretraining draws it), the classifier's accuracy (the fraction
of scenes whose exact caption denoises better; 0.5: the base ignores the binding) and the median
|e_swapped - e_exact|. For position scenes also the relation term's attention projection on the same noisy
images under the exact caption (``relation_loss``: the subject's attention centroid minus the target's,
in canvas widths, along the relation; 0 when the attention does not say which side). Renders, t and
noise are fixed functions of the seed, so checkpoints compare on the same draws. Sections 27 and 28 of
docs/learning-study.md.
"""

from __future__ import annotations

import argparse

import torch

from vgpo.models.tiny import TinyFlowModel
from vgpo.pretrain import binding_errors, cross_attention_maps, relation_loss
from vgpo.worlds import get_world
from vgpo.worlds.shapes.prompts import object_relations, swap_binding

LEVELS = (0.3, 0.5, 0.7, 0.9, "logit-normal")


@torch.no_grad()
def probe(checkpoint: str, split: str, scenes: int, seed: int = 0) -> list[dict]:
    model = TinyFlowModel.load(checkpoint)
    world = get_world("shapes")
    rows = []
    for tag in ("color_attr", "position"):
        metas = [m for m in world.load_prompts(world.prompt_file(split)) if m["tag"] == tag and swap_binding(m)]
        metas = (metas * (scenes // len(metas) + 1))[:scenes]
        x0 = model.encode_images(torch.stack([world.render(m, 1000 + i) for i, m in enumerate(metas)]))
        gen = torch.Generator().manual_seed(seed)
        exact, swapped = [m["prompt"] for m in metas], [swap_binding(m)["prompt"] for m in metas]
        for level in LEVELS:
            t = (
                torch.sigmoid(torch.randn(scenes, generator=gen))
                if level == "logit-normal"
                else torch.full((scenes,), level)
            )
            noise = torch.randn(x0.shape, generator=gen)
            xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
            e_exact, e_swapped = binding_errors(model, xt, t, noise - x0, exact, swapped)
            diff = e_swapped - e_exact
            projection = None
            if tag == "position":
                maps = cross_attention_maps(model, xt, t, exact)
                objects = [world.object_masks(m, 1000 + i) for i, m in enumerate(metas)]
                stated = [object_relations(m) for m in metas]
                _, projection = relation_loss(maps, objects, stated, model.tokenizer.max_tokens, margin=1.0)
            rows.append(
                {
                    "tag": tag,
                    "t": level,
                    "accuracy": (diff > 0).float().mean().item(),
                    "median_abs": diff.abs().median().item(),
                    "projection": projection,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="train")
    parser.add_argument("--scenes", type=int, default=256, help="renders per tag")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for checkpoint in args.checkpoints:
        print(f"{checkpoint} ({args.split}, {args.scenes} scenes a tag)")
        print("| tag | t | accuracy | median abs difference | attention projection |\n|---|---|---|---|---|")
        for r in probe(checkpoint, args.split, args.scenes):
            projection = "" if r["projection"] is None else f"{r['projection']:+.3f}"
            print(f"| {r['tag']} | {r['t']} | {r['accuracy']:.3f} | {r['median_abs']:.1e} | {projection} |")


if __name__ == "__main__":
    main()
