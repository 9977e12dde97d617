"""How much of an epoch's policy gradient is signal, at the starting model (README, "What limits the
demo", measurement 3; its control over a whole run is benchmarks/shuffled_control.py).

    python benchmarks/gradient_snr.py [--epochs 12] [--config configs/shapes-vgpo.yaml] [--set key=value ...]

From the preset's starting model (no update is applied), each of ``--epochs`` epochs is sampled and
scored as in training, and the gradient of its PPO loss at ratio 1 (one optimizer step over all its
samples) is recorded, once with the epoch's advantages and once with them shuffled across samples
(a control with the same noise and no signal). With g_e the epoch gradients, the signal is
|E g|^2, estimated without bias by the mean of g_e.g_f over pairs e != f, and the noise of one
epoch's estimate is mean |g_e|^2 minus that (``vgpo.bench.stats.gradient_signal_noise``). Printed:
both, their ratio (the SNR of one epoch's gradient) with a 2-standard-error upper bound, the samples
an SNR of 1 would take (samples per epoch / SNR, since the noise falls as 1/samples) and the mean
pairwise cosine.
"""

from __future__ import annotations

import argparse

import torch

from vgpo.bench.stats import gradient_signal_noise
from vgpo.config import from_dict, load_yaml, parse_overrides
from vgpo.models import load_model
from vgpo.rewards import build
from vgpo.train import TrainConfig
from vgpo.train.trainer import compute_advantages, sample_epoch, score_epoch, update
from vgpo.worlds import get_world


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer that keeps a copy of the flat gradient instead of stepping."""

    def __init__(self, params):
        super().__init__(params, {})
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        flat = [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
            for group in self.param_groups
            for p in group["params"]
        ]
        self.grads.append(torch.cat(flat).double())


def report(name: str, stats: dict[str, float], samples: int) -> str:
    if not stats["noise"] > 0:
        return f"{name:>30}: no noise to measure against (every gradient is zero or identical: |g|^2 {stats['signal']:.3e})"
    ratio, bound = stats["snr"], (max(stats["signal"], 0) + 2 * stats["signal_se"]) / stats["noise"]
    need = f"{samples / bound:,.0f}" if bound > 0 else "inf"
    return (
        f"{name:>30}: signal {stats['signal']:+.3e} +- {stats['signal_se']:.1e}  noise/epoch {stats['noise']:.3e}  "
        f"SNR/epoch {ratio:+.4f} (2-SE bound {bound:.4f}: >= {need} samples for SNR 1)  pairwise cos {stats['cos']:+.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes-vgpo.yaml")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--save", default="", help="also write the recorded gradients to this .pt file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset overrides")
    args = parser.parse_args()
    cfg = from_dict(TrainConfig, {**load_yaml(args.config), **parse_overrides(args.set)})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = get_world(cfg.world)
    prompts = world.load_prompts(world.train_file)
    model = load_model(cfg.model, cfg.checkpoint, cfg.model_options)
    reward = build(cfg.reward_spec(world.reward))
    sigmas = model.schedule(cfg.num_steps)
    params = model.trainable_parameters()
    samples = cfg.prompts_per_epoch * cfg.group_size
    # One optimizer step over the whole epoch, no clipping: the recorded gradient is the epoch's.
    cfg.train_batch_size, cfg.gradient_accumulation, cfg.max_grad_norm, cfg.inner_epochs = samples, 1, 1e30, 1
    true_grads, shuffled_grads = [], []
    gen = torch.Generator().manual_seed(1234)
    for epoch in range(args.epochs):
        with torch.no_grad():
            batch = sample_epoch(cfg, model, prompts, epoch, sigmas)
            scores = score_epoch(cfg, model, reward, batch)
        adv, _ = compute_advantages(cfg, scores.final, scores.values, batch.group_ids)
        keep = torch.ones(len(adv), dtype=torch.bool)
        for advantages, store in ((adv, true_grads), (adv[torch.randperm(len(adv), generator=gen)], shuffled_grads)):
            recorder = GradientRecorder(params)
            update(cfg, model, params, recorder, None, batch, advantages, keep, epoch)
            store.append(recorder.grads[0])
        print(f"epoch {epoch}: reward {scores.final.mean():.3f}, |g| {true_grads[-1].norm():.3e}", flush=True)
    for name, grads in (("advantages", true_grads), ("shuffled advantages (control)", shuffled_grads)):
        print(report(name, gradient_signal_noise([g.numpy() for g in grads]), samples))
    if args.save:
        torch.save({"true": true_grads, "shuffled": shuffled_grads, "samples_per_epoch": samples}, args.save)


if __name__ == "__main__":
    main()
