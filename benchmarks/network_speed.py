"""The tiny U-Net alone, variant against variant, interleaved in one process: a rollout-shaped forward
(no grad) and an update-shaped forward+backward, per precision and option (channels-last memory,
SDPA's math kernel, attention in bf16, threads), with wall and process CPU time per call.

    python benchmarks/network_speed.py [--variants fp32 bf16 bf16-cl bf16-math] [--batch 128 32]
        [--repeats 7] [--threads 2] [--no-keep-freed-memory]

Variants: ``fp32``, ``bf16`` (autocast, as ``model_options.precision: bf16``), with suffixes: ``-cl``
channels-last weights and inputs; ``-compiled`` the network through ``torch.compile`` (inductor, static
shapes; its compile time is in the first-calls column: the first forward and forward+backward, timed); ``-math`` attention through ``SDPBackend.MATH``; ``-a16`` attention
in the autocast dtype (the model computes it in float32); ``-t1``/``-t2`` torch threads for that
variant (CPU seconds then add up both threads' time); ``-p<N>`` the batch in N passes of batch/N (a
forward+backward accumulates the N backwards, as the trainer's terms do); ``-fixed`` each call's passes inside
``model.fixed_weights()`` (with ``--lora``: one merge for the N passes, not one per pass). ``--lora``: the
demo's adapter (rank 16, alpha 32, merged weights) on the network, with random weights so that the merge
matters. ``--batch F B``: the forward's batch (128 = a
rollout chunk of 64 with CFG) and the forward+backward's (32 = a micro-batch of 16 with CFG).
``--no-keep-freed-memory`` leaves glibc's default (freed big blocks go back to the OS), to be compared
in a second process. Each variant's velocity is compared with fp32's (relative L2, worst sample).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from vgpo.models import layers, load_model, tiny
from vgpo.models.protocol import slice_condition
from vgpo.perf import count_flops


@contextlib.contextmanager
def autocast_attention():
    """The tiny model's attention left to autocast (bf16 under bf16) instead of float32 (``-a16``)."""
    own = layers.attention

    def as_autocast_says(q, k, v, mask=None):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    layers.attention = as_autocast_says
    try:
        yield
    finally:
        layers.attention = own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/shapes-base")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16-cl", "bf16-math"])
    parser.add_argument("--batch", type=int, nargs=2, default=[128, 32], metavar=("FORWARD", "BACKWARD"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-keep-freed-memory", action="store_true")
    parser.add_argument("--lora", action="store_true", help="the demo's merged-weight LoRA adapter, random weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.no_keep_freed_memory:
        tiny.keep_freed_memory = lambda: None
    lora = {"lora": {"rank": 16, "alpha": 32, "merged_forward": True}} if args.lora else {}
    base = load_model("tiny", args.checkpoint, {**lora, "precision": "fp32"})
    if args.lora:
        with torch.no_grad():
            for p in base.trainable_parameters():
                p.add_(0.01 * torch.randn_like(p))
    prompts = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", "a big purple square"]

    def inputs(n: int, channels_last: bool):
        gen = torch.Generator().manual_seed(n)
        x = torch.randn(n, *base.latent_shape, generator=gen)
        sigma = torch.rand(n, generator=gen)
        cond = base.encode_prompts([prompts[i % len(prompts)] for i in range(n)])
        return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), sigma, cond

    def make(name: str):
        parts = name.split("-")
        model = copy.copy(base)
        model.precision = parts[0]
        channels_last = "cl" in parts
        if channels_last:
            model.net = copy.deepcopy(base.net).to(memory_format=torch.channels_last)
        if "compiled" in parts:
            model.net = torch.compile(copy.deepcopy(model.net), dynamic=False)
        attention = (lambda: sdpa_kernel(SDPBackend.MATH)) if "math" in parts else contextlib.nullcontext
        if "a16" in parts:
            attention = autocast_attention
        threads = next((int(p[1:]) for p in parts if p[0] == "t" and p[1:].isdigit()), args.threads)
        passes = next((int(p[1:]) for p in parts if p[0] == "p" and p[1:].isdigit()), 1)
        scope = model.fixed_weights if "fixed" in parts else contextlib.nullcontext
        fwd_in, bwd_in = inputs(args.batch[0], channels_last), inputs(args.batch[1], channels_last)

        def split(x, sigma, cond):
            """The inputs in ``passes`` slices along the batch."""
            n = -(-len(x) // passes)
            return [
                (x[i : i + n], sigma[i : i + n], slice_condition(cond, slice(i, i + n))) for i in range(0, len(x), n)
            ]

        def forward():
            torch.set_num_threads(threads)
            with torch.no_grad(), attention(), scope():
                return torch.cat([model.velocity(*part) for part in split(*fwd_in)])

        def backward():
            torch.set_num_threads(threads)
            for part in split(*bwd_in):
                with attention():
                    v = model.velocity(*part)
                v.square().mean().backward()
            model.net.zero_grad(set_to_none=True)

        return {"forward": forward, "backward": backward}

    runs = {name: make(name) for name in args.variants}
    warmup = {}
    for name in runs:  # first calls, timed: oneDNN primitive creation; torch.compile's compilation
        w = time.perf_counter()
        runs[name]["forward"](), runs[name]["backward"]()
        warmup[name] = time.perf_counter() - w
    flops = {
        "forward": count_flops(runs[args.variants[0]]["forward"]),
        "backward": count_flops(runs[args.variants[0]]["backward"]),
    }
    reference = make("fp32")["forward"]()
    times = {(n, k): [] for n in runs for k in ("forward", "backward")}
    cpu = {key: [] for key in times}
    for _ in range(args.repeats):
        for kind in ("forward", "backward"):
            for name in runs:
                w, c = time.perf_counter(), time.process_time()
                runs[name][kind]()
                times[name, kind].append(time.perf_counter() - w)
                cpu[name, kind].append(time.process_time() - c)
    print(
        f"{torch.get_num_threads()} threads, keep freed memory: {not args.no_keep_freed_memory}, "
        f"{args.repeats} interleaved repeats; forward batch {args.batch[0]} (no grad), forward+backward batch {args.batch[1]}"
    )
    print(
        f"{'variant':14}{'pass':10}{'wall s median (min-max)':>27}{'CPU s':>8}{'GFLOP/s':>9}{'vs fp32':>9}{'rel. err':>10}"
        f"{'first calls s':>14}"
    )
    for name in runs:
        v = runs[name]["forward"]()
        err = ((v - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)).max().item()
        for kind in ("forward", "backward"):
            ts = times[name, kind]
            med = statistics.median(ts)
            ratios = [a / b for a, b in zip(times["fp32", kind], ts)] if ("fp32", kind) in times else []
            speed = f"{statistics.median(ratios):8.2f}x" if ratios else f"{'-':>9}"
            print(
                f"{name:14}{kind:10}{med:12.3f} ({min(ts):.3f}-{max(ts):.3f}){statistics.median(cpu[name, kind]):8.3f}"
                f"{flops[kind] / med / 1e9:9.1f}{speed}{err:10.1e}"
                + (f"{warmup[name]:14.1f}" if kind == "forward" else f"{'(both)':>14}")
            )


if __name__ == "__main__":
    main()
