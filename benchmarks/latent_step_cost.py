"""Per-sample cost of one velocity forward and of one forward+backward, pixel vs latent tiny models
(minimum of --repeats timings, so that other processes on shared cores inflate it least).

    python benchmarks/latent_step_cost.py --ae runs/ae-shapes [--threads 1] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.worlds import get_world

MODELS = {
    "pixel 32x32x3, widths 32/64/128": ((32, 64, 128), False),
    "latent 8x8x4, widths 32/64/128": ((32, 64, 128), True),
    "latent 8x8x4, widths 64/128/256": ((64, 128, 256), True),
}


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: TinyFlowModel, prompts: list[str], repeats: int) -> tuple[float, float, float]:
    """ms per sample of a velocity forward, a forward+backward, and decode()."""
    cond = model.encode_prompts(prompts)
    x = torch.randn(len(prompts), *model.latent_shape)
    sigma = torch.full((len(prompts),), 0.5)

    def forward():
        with torch.no_grad():
            model.velocity(x, sigma, cond)

    def forward_backward():
        model.velocity(x, sigma, cond).square().mean().backward()

    def decode():
        model.decode(x)

    return tuple(best(fn, repeats) / len(prompts) * 1e3 for fn in (forward, forward_backward, decode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = get_world("shapes")
    prompts = [m["prompt"] for m in world.load_prompts(world.train_file)[: args.batch]]
    for name, (channels, latent) in MODELS.items():
        torch.manual_seed(0)
        model = TinyFlowModel(
            TinyConfig(
                vocab=world.vocabulary(), channels=channels, text_encoder="ordered", latent=args.ae if latent else ""
            )
        )
        f, fb, d = measure(model, prompts, args.repeats)
        print(
            f"{name}: forward {f:.2f} ms/sample, forward+backward {fb:.2f} ms/sample, decode {d:.2f} ms/sample "
            f"({model.num_parameters() / 1e6:.2f} M parameters, {args.threads} thread(s))",
            flush=True,
        )


if __name__ == "__main__":
    main()
