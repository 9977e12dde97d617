"""Quality beside the task reward (the reward-hacking monitor) and the projection-accuracy check.

Encoder: a tiny CNN trained once on a world's renders of its *train* prompts to say which prompt tokens
an image shows (multi-label: colours, classes, numbers, relation words; letters in the text world). Its
64-d features are the space of

* a Fréchet distance (FD) between generated held-out images and renders of the same prompts, and
* within-prompt diversity: the mean pairwise feature distance among the images of one prompt.

A run whose held-out score rises while its FD grows or its diversity shrinks (relative to the base
model, same prompts and noise) is flagged: the policy may be exploiting the detector.

Projection accuracy: the Spearman correlation between the reward of the one-step projection
x0_hat at step i and the final reward, per step, over SDE rollouts of the train prompts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vgpo.errors import VgpoError
from vgpo.evaluate import sample_images
from vgpo.models import FlowModel, load_model
from vgpo.models.tokenizer import QUOTE, PromptTokenizer
from vgpo.sampling import Trajectory, rollout
from vgpo.train.config import TrainConfig
from vgpo.utils import atomic_save_safetensors, atomic_write_text, derive_seed
from vgpo.worlds import World, balanced_choice, get_world

from .stats import frechet_distance, spearman, within_group_diversity

QUALITY_SEED = 20251  # sampling noise of quality images: the same for the base and every run
# A run is flagged when its held-out headline rises by more than SCORE_RISE while its FD rises by more
# than FD_RISE (relative to the base's) or its within-prompt diversity falls by more than DIVERSITY_DROP.
SCORE_RISE = 0.0
FD_RISE = 0.25
DIVERSITY_DROP = 0.25


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    world: str
    image_size: tuple = (32, 32)
    labels: list = field(default_factory=list)  # prompt tokens predicted from the image
    channels: tuple = (16, 32, 64)
    feature_dim: int = 64


class ImageEncoder(nn.Module):
    """conv stack (full, 1/2, 1/4 resolution) -> 2x2 average pool (keeps coarse layout) -> 64-d features."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2 = cfg.channels

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(4, cout), nn.SiLU()]

        self.body = nn.Sequential(
            *block(3, c0, 1),
            *block(c0, c1, 2),
            *block(c1, c1, 1),
            *block(c1, c2, 2),
            *block(c2, c2, 1),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.proj = nn.Linear(4 * c2, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, max(1, len(cfg.labels)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], resized to the encoder's size when they differ."""
        size = tuple(self.cfg.image_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.proj(self.body(images.float() * 2.0 - 1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self.features(images)))


def _labels(tokenizer: PromptTokenizer, metas: Sequence[dict]) -> list[str]:
    return sorted({t for m in metas for t in tokenizer.split(m["prompt"]) if t != QUOTE})


def _targets(tokenizer: PromptTokenizer, metas: Sequence[dict], labels: list[str]) -> torch.Tensor:
    index = {t: i for i, t in enumerate(labels)}
    out = torch.zeros(len(metas), len(labels))
    for row, m in enumerate(metas):
        for t in tokenizer.split(m["prompt"]):
            if t in index:
                out[row, index[t]] = 1.0
    return out


def _renders(world: World, metas: Sequence[dict], seed: int, salt: str) -> torch.Tensor:
    return torch.stack([world.render(m, derive_seed(seed, salt, i) % 2**31) for i, m in enumerate(metas)])


def train_encoder(
    world: str = "shapes",
    out: str | Path = "checkpoints/shapes-encoder",
    steps: int = 1500,
    batch_size: int = 128,
    renders: int = 4096,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the quality-monitor encoder on renders of the world's train prompts; write
    ``encoder.safetensors`` and ``config.json`` (with label accuracy on renders of the test prompts)."""
    if threads:
        torch.set_num_threads(threads)
    started = time.time()
    w = get_world(world)
    train_metas = w.load_prompts(w.train_file)
    tokenizer = PromptTokenizer(w.vocabulary())
    labels = _labels(tokenizer, train_metas)
    cfg = EncoderConfig(world=world, image_size=tuple(w.image_size), labels=labels)
    gen = torch.Generator().manual_seed(derive_seed(seed, "encoder-data"))
    metas = [train_metas[i] for i in balanced_choice(train_metas, renders, gen)]
    images, targets = _renders(w, metas, seed, "encoder-train"), _targets(tokenizer, metas, labels)
    torch.manual_seed(seed)
    model = ImageEncoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    loss_value = float("nan")
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = images[idx]
        # Generated images are noisier and blurrier than renders: train on noisy renders too.
        noise = torch.rand(len(idx), 1, 1, 1, generator=gen) * 0.1
        x = (x + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        loss = F.binary_cross_entropy_with_logits(model(x), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"encoder step {step + 1}/{steps}: loss {loss_value:.4f}")
    model.eval()
    test_metas = w.load_prompts(w.test_file)
    with torch.no_grad():
        logits = torch.cat(
            [model(_renders(w, test_metas[i : i + 256], seed, "encoder-test")) for i in range(0, len(test_metas), 256)]
        )
    test_targets = _targets(tokenizer, test_metas, labels)
    pred = (logits > 0).float()
    metrics = {
        "train_loss": loss_value,
        "test_label_accuracy": (pred == test_targets).float().mean().item(),
        "test_exact_accuracy": (pred == test_targets).all(dim=1).float().mean().item(),
        "steps": steps,
        "renders": renders,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "wall_s": round(time.time() - started, 1),
    }
    out = Path(out)
    atomic_save_safetensors(model.state_dict(), out / "encoder.safetensors")
    meta = {
        "kind": "vgpo-bench-encoder",
        "arch": asdict(cfg),
        "metrics": metrics,
        "note": "trained on renders of the world's train prompts only; features = ImageEncoder.features",
    }
    atomic_write_text(json.dumps(meta, indent=2) + "\n", out / "config.json")
    log(
        f"wrote {out}/encoder.safetensors: test label accuracy {metrics['test_label_accuracy']:.3f}, "
        f"exact {metrics['test_exact_accuracy']:.3f}, {metrics['wall_s']:.0f} s"
    )
    return out


def load_encoder(path: str | Path) -> ImageEncoder:
    path = Path(path)
    cfg_path, weights = path / "config.json", path / "encoder.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise VgpoError(
            f"encoder {path}: missing config.json or encoder.safetensors; create it with "
            f"`vgpo bench train-encoder --out {path}` (or run the bench with --no-quality)"
        )
    meta = json.loads(cfg_path.read_text())
    arch = dict(meta["arch"])
    arch["image_size"], arch["channels"] = tuple(arch["image_size"]), tuple(arch["channels"])
    model = ImageEncoder(EncoderConfig(**arch))
    model.load_state_dict(load_file(str(weights)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode(encoder: ImageEncoder, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    return (
        torch.cat([encoder.features(images[i : i + batch_size].cpu()) for i in range(0, len(images), batch_size)])
        .double()
        .numpy()
    )


# --------------------------------------------------------------------------------------------------
# Quality of a model on held-out prompts
# --------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    features: np.ndarray
    groups: list[int]
    fd_floor: float  # FD between two independent render sets of the same prompts (the noise floor)
    diversity: float | None  # within-prompt diversity of the renders


def reference(world: World, metas: Sequence[dict], per_prompt: int, encoder: ImageEncoder) -> Reference:
    rows = [m for m in metas for _ in range(per_prompt)]
    groups = [i for i in range(len(metas)) for _ in range(per_prompt)]
    feats = encode(encoder, _renders(world, rows, QUALITY_SEED, "reference"))
    other = encode(encoder, _renders(world, rows, QUALITY_SEED, "reference-2"))
    return Reference(feats, groups, frechet_distance(feats, other), within_group_diversity(feats, groups))


def model_quality(
    model: FlowModel, cfg: TrainConfig, metas: Sequence[dict], per_prompt: int, encoder: ImageEncoder, ref: Reference
) -> dict:
    """FD to the reference renders and within-prompt diversity of ``per_prompt`` ODE samples per held-out
    prompt (the run's eval steps and guidance; noise fixed by QUALITY_SEED)."""
    rows = [m for m in metas for _ in range(per_prompt)]
    groups = [i for i in range(len(metas)) for _ in range(per_prompt)]
    images = sample_images(
        model, [m["prompt"] for m in rows], cfg.eval_num_steps, cfg.eval_guidance, QUALITY_SEED, cfg.eval_batch_size
    )
    feats = encode(encoder, images)
    return {
        "fd": frechet_distance(feats, ref.features),
        "diversity": within_group_diversity(feats, groups),
        "n_images": len(rows),
        "images_per_prompt": per_prompt,
    }


def load_trained(cfg: TrainConfig, run_dir: str | Path, use_ema: bool = True) -> FlowModel:
    """The base model with a finished run's trained weights; the EMA weights (what evaluation uses)
    when the run kept them."""
    from vgpo.train.run_folder import load_checkpoint_weights

    model = load_model(cfg.model, cfg.checkpoint, cfg.model_options, cfg.device)
    load_checkpoint_weights(model, run_dir, use_ema)
    return model


def quality_flags(score_delta: float | None, quality: dict | None, base: dict | None) -> list[str]:
    """Why a run is flagged: its held-out score rose while FD rose / diversity fell beyond the tolerances."""
    if score_delta is None or quality is None or base is None or score_delta <= SCORE_RISE:
        return []
    flags = []
    if base.get("fd") is not None and quality.get("fd") is not None and quality["fd"] > base["fd"] * (1 + FD_RISE):
        flags.append(f"FD {base['fd']:.3g} -> {quality['fd']:.3g} (+{quality['fd'] / base['fd'] - 1:.0%})")
    bd, qd = base.get("diversity"), quality.get("diversity")
    if bd and qd is not None and qd < bd * (1 - DIVERSITY_DROP):
        flags.append(f"diversity {bd:.3g} -> {qd:.3g} ({qd / bd - 1:.0%})")
    return flags


# --------------------------------------------------------------------------------------------------
# Projection accuracy
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def projection_accuracy(
    traj: Trajectory,
    decode: Callable[[torch.Tensor], torch.Tensor],
    reward_fn: Callable,
    prompts: Sequence[str],
    metadata: Sequence[dict],
    group_ids: Sequence[int] | None = None,
) -> dict:
    """Spearman rho between R(decode(x0_hat[:, i])) and R(final image), per step i.

    ``pooled``: over all samples; ``within_group``: the mean over prompt groups of the within-group rho
    (what a group-relative advantage sees), over groups where both sides vary. None where undefined
    (a constant reward). Returns {"steps", "pooled", "within_group", "final_reward_mean", "n_samples"}."""
    B, T = traj.log_probs.shape
    images = torch.cat([decode(traj.x0_hat[:, i]).cpu() for i in range(T)] + [decode(traj.final).cpu()])
    rewards = reward_fn(images, list(prompts) * (T + 1), list(metadata) * (T + 1)).float().view(T + 1, B).numpy()
    final = rewards[-1]
    groups = list(group_ids) if group_ids is not None else [0] * B
    pooled, within = [], []
    for i in range(T):
        pooled.append(spearman(rewards[i], final))
        rhos = []
        for g in dict.fromkeys(groups):
            rows = [b for b in range(B) if groups[b] == g]
            rho = spearman(rewards[i, rows], final[rows]) if len(rows) > 1 else None
            if rho is not None:
                rhos.append(rho)
        within.append(float(np.mean(rhos)) if rhos else None)
    return {
        "steps": list(range(T)),
        "pooled": pooled,
        "within_group": within,
        "final_reward_mean": float(final.mean()),
        "n_samples": B,
    }


@torch.no_grad()
def projection_rollouts(
    model: FlowModel, cfg: TrainConfig, train_metas: Sequence[dict], n_prompts: int, group: int, seed: int = 0
) -> tuple[Trajectory, list[dict], list[int]]:
    """SDE rollouts as in training (cfg's steps, noise level, guidance): ``group`` samples for each of
    ``n_prompts`` tag-balanced train prompts; noise fixed by ``seed``."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "projection-prompts"))
    chosen = balanced_choice(train_metas, n_prompts, gen)
    metas = [train_metas[c] for c in chosen for _ in range(group)]
    group_ids = [g for g in range(n_prompts) for _ in range(group)]
    sigmas = model.schedule(cfg.num_steps)
    parts = []
    for start in range(0, len(metas), cfg.sample_batch_size):
        chunk = metas[start : start + cfg.sample_batch_size]
        gens = [
            torch.Generator(device=model.device).manual_seed(derive_seed(seed, "projection", start + j))
            for j in range(len(chunk))
        ]
        parts.append(
            rollout(
                model,
                model.encode_prompts([m["prompt"] for m in chunk]),
                model.negative_condition(len(chunk)),
                sigmas,
                cfg.noise_levels,
                cfg.guidance_scale,
                generator=gens,
            )
        )
    traj = Trajectory(
        sigmas=parts[0].sigmas,
        states=torch.cat([p.states for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        x0_hat=torch.cat([p.x0_hat for p in parts]),
    )
    return traj, metas, group_ids
