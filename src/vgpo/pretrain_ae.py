"""Training of the latent autoencoder (``models/autoencoder.py``) on a world's renders: ``vgpo pretrain-ae``.

It only has to reconstruct pixels, so it sees renders of the prompts of every split it is given
(default: train and test, the whole composition space), each with a fresh layout seed. Loss: mean
squared error in [-1, 1] pixel space, optionally weighted up at the renders' edges (``edge_weight``);
Adam with linear warm-up and an optional cooldown. Every batch is a pure function of
(seed, step), so a resumed run continues where the killed one stopped; ``resume.pt`` and the
checkpoint are written atomically. At every save the latent scaling and shift factors are measured on
a fixed, seeded set of renders (``stats_images``), as SD3's are.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vgpo.config import check_fields, doc, same_as_written, to_dict
from vgpo.errors import VgpoError
from vgpo.models.autoencoder import Autoencoder, AutoencoderConfig, latent_statistics
from vgpo.pretrain import _truncate_log, lr_factor
from vgpo.utils import atomic_torch_save, atomic_write_text, derive_seed, load_torch
from vgpo.worlds import SPLITS, World, balanced_choice, get_world


@dataclass
class AutoencoderTrainConfig:
    world: str = doc("shapes", "world whose renders the autoencoder reconstructs (shapes, text)")
    out: str = doc("runs/ae-shapes", "output folder: autoencoder.safetensors, config.json, resume.pt, log.jsonl")
    steps: int = doc(400, "optimizer steps")
    batch_size: int = doc(64, "renders per step")
    lr: float = doc(2e-3, "peak Adam learning rate")
    warmup_steps: int = doc(20, "linear learning-rate warm-up")
    cooldown_steps: int = doc(
        0,
        "linear decay of the learning rate to 0 over the last N steps, as `vgpo pretrain`'s; 0: constant after "
        "warm-up (the autoencoders of docs/learning-study.md section 5)",
    )
    edge_weight: float = doc(
        0.0,
        "extra loss weight on pixels at the render's edges (a 3x3 neighbourhood that is not flat): 1 + edge_weight "
        "there, 1 elsewhere, normalised to mean 1. The Shapes detector reads a square by its corners, and a "
        "blurred corner reads as a circle (docs/learning-study.md section 5); 0: plain mean squared error",
    )
    channels: list[int] = doc([32, 64], "widths at full resolution and at 1/2 (and 1/4)")
    latent_channels: int = doc(4, "latent channels")
    downsample: int = doc(
        4,
        "spatial downsampling, 4 (latents H/4 x W/4, two stride-2 stages) or 2 (one stage): 2 costs the flow "
        "model 4x the latent area and did not round-trip small squares better (docs/learning-study.md section 5)",
    )
    splits: list[str] = doc(["train", "test"], "prompt splits whose metadata is rendered (pixels only: no labels)")
    stats_images: int = doc(512, "renders the latent scaling/shift factors are measured on")
    seed: int = doc(0, "seed of initialisation, of every batch and of the statistics renders")
    save_every: int = doc(100, "steps between checkpoints")
    threads: int = doc(0, "torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        check_fields(self)  # finite numbers, known device
        for name in ("steps", "batch_size", "save_every", "stats_images"):
            if getattr(self, name) < 1:
                raise VgpoError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise VgpoError(f"lr: expected > 0, got {self.lr}")
        if self.edge_weight < 0:
            raise VgpoError(f"edge_weight: expected >= 0, got {self.edge_weight}")
        if not 0 <= self.cooldown_steps <= self.steps:
            raise VgpoError(f"cooldown_steps: expected in [0, steps={self.steps}], got {self.cooldown_steps}")
        if not self.splits or any(s not in SPLITS for s in self.splits):
            raise VgpoError(f"splits: expected a non-empty list of {', '.join(SPLITS)}, got {self.splits}")


def render_batch(world: World, prompts: list[dict], n: int, seed: int) -> torch.Tensor:
    """``n`` renders of tag-balanced prompts with fresh layout seeds, a pure function of ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    metas = [prompts[i] for i in balanced_choice(prompts, n, gen)]
    seeds = torch.randint(2**31, (n,), generator=gen).tolist()
    return torch.stack([world.render(m, s) for m, s in zip(metas, seeds)])


def edge_mask(images: torch.Tensor, threshold: float = 1e-3) -> torch.Tensor:
    """(B, 1, H, W) float mask of the pixels whose 3x3 neighbourhood (edge-padded) is not one colour."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    spread = F.max_pool2d(padded, 3, stride=1) + F.max_pool2d(-padded, 3, stride=1)  # max - min per channel
    return (spread.amax(1, keepdim=True) > threshold).to(images.dtype)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """Mean squared error, each pixel weighted by 1 + edge_weight on the target's edges and the weights
    normalised to mean 1, so the loss's scale (and the learning rate's meaning) stays that of plain MSE."""
    if edge_weight == 0:
        return F.mse_loss(recon, target)  # exactly the loss the section-5 autoencoders were trained with
    weight = 1.0 + edge_weight * edge_mask(target)
    return ((recon - target).pow(2) * weight).mean() / weight.mean()


def reconstruction_error(ae: Autoencoder, images: torch.Tensor) -> float:
    """Mean squared error of the round trip through the flow model's latents, in [0, 1] pixels."""
    with torch.no_grad():
        return F.mse_loss(ae.decode_latents(ae.encode_latents(images)), images).item()


def pretrain_autoencoder(cfg: AutoencoderTrainConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = get_world(cfg.world)
    prompts = [m for split in cfg.splits for m in world.load_prompts(world.prompt_file(split))]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    arch = AutoencoderConfig(
        image_size=tuple(world.image_size),
        channels=tuple(cfg.channels),
        latent_channels=cfg.latent_channels,
        downsample=cfg.downsample,
        world=cfg.world,
    )
    arch_key = to_dict(arch)  # before the factors are measured into it
    ae = Autoencoder(arch)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg))
    start, wall_before, invocations = 0, 0.0, 1
    resume_path = out / "resume.pt"
    if resume_path.is_file():
        state = load_torch(resume_path)  # tensors and plain containers only: a crafted file cannot run code
        if not isinstance(state, dict) or not same_as_written(state.get("arch"), arch):
            raise VgpoError(f"{resume_path}: written for another architecture/world; use a new --out")
        ae.load_state_dict(state["ae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, wall_before, invocations = state["step"], state["wall_s"], state["invocations"] + 1
        print(f"resuming {out} from step {start}")
    stats_images = render_batch(world, prompts, cfg.stats_images, derive_seed(cfg.seed, "stats"))
    _truncate_log(out / "log.jsonl", start)
    log = (out / "log.jsonl").open("a")
    started = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain-ae", dynamic_ncols=True)
    for step in bar:
        images = render_batch(world, prompts, cfg.batch_size, derive_seed(cfg.seed, step))
        x = images * 2.0 - 1.0
        loss = reconstruction_loss(ae(x), x, cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.5f}")
        log.write(json.dumps({"step": step + 1, "loss": loss.item(), "lr": sched.get_last_lr()[0]}) + "\n")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            log.flush()
            wall_s = round(wall_before + time.time() - started, 1)
            ae.cfg.scaling_factor, ae.cfg.shift_factor = latent_statistics(ae, stats_images)
            ae.save(
                out,
                extra={
                    "train": {
                        **to_dict(cfg),
                        "completed_steps": step + 1,
                        "wall_s": wall_s,
                        "stats_mse": reconstruction_error(ae, stats_images),
                    }
                },
            )
            atomic_torch_save(
                {
                    "arch": arch_key,
                    "ae": ae.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "step": step + 1,
                    "wall_s": wall_s,
                    "invocations": invocations,
                },
                resume_path,
            )
    log.close()
    atomic_write_text(
        json.dumps(
            {"wall_s": round(wall_before + time.time() - started, 1), "steps": cfg.steps, "invocations": invocations}
        )
        + "\n",
        out / "pretrain_time.json",
    )
    return out
