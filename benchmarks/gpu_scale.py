"""SD3.5-Medium training cost at scale with random weights: peak memory, seconds per phase, images/s,
VGPO/GRPO epoch time, the network's share of the update and achieved TFLOP/s, as one JSON.

    python benchmarks/gpu_scale.py --scale sd35m --out DIR [--budget-s 420] [--epochs 1]
    python benchmarks/gpu_scale.py --scale sd35m --flops-only --out DIR   # model FLOPs, no device (meta)
    python benchmarks/gpu_scale.py --scale tiny --out DIR                 # CPU, seconds (CI)

What is built (no download, random weights): the SD3.5-M transformer (``configs/gpu/sd35m-transformer.json``,
MMDiT-X) and its 16-channel VAE (``sd35m-vae.json``) inside a diffusers ``StableDiffusion3Pipeline``
wrapped by the project's adapter ``vgpo.models.sd3.SD3FlowModel`` (LoRA, precision and gradient
checkpointing as the presets set them), and a PickScore-sized CLIP ViT-H/14 (``pickscore-clip-h14.json``)
loaded by the project's ``pickscore`` reward. The text encoders are not built: prompts become random
embeddings of the real shapes (77 CLIP + max_sequence_length T5 tokens of width joint_attention_dim,
pooled width pooled_projection_dim), so their weights and their encoding time are not in the figures.
``--scale tiny`` keeps every structure at toy widths (64 px, fp32) so that CI runs it on a CPU.

What runs: the training settings of ``configs/sd35m-pickscore-{grpo,vgpo}.yaml`` (batch sizes, steps,
CFG, KL, LoRA, precision) on a smaller epoch (``--prompts`` x ``--group-size`` samples), through the
trainer's own phase functions (``run_epoch``). Runs, in this order (a budget stop keeps the first):
GRPO, then VGPO at each ``--tcrm-every``, without gradient checkpointing; then GRPO and VGPO at the
first ``--tcrm-every`` with it (checkpointing changes only the update, which those two already time).
Every sample is updated (``drop_zero_std_groups: false``), so random rewards do not decide the work.

The JSON (``DIR/gpu_scale.json``) is rewritten after every run; ``--budget-s`` (from process start)
stops the work and writes what was measured, with ``status: stopped_by_budget``. Field meanings:
docs/benchmarks/gpu/README.md.
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import string  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "gpu"
PRESETS = {
    "grpo": ROOT / "configs" / "sd35m-pickscore-grpo.yaml",
    "vgpo": ROOT / "configs" / "sd35m-pickscore-vgpo.yaml",
}
RESULT_NAME = "gpu_scale.json"
CLIP_TOKENS = 77  # SD3's CLIP encoders' sequence length, ahead of the T5 tokens in prompt_embeds


# --------------------------------------------------------------------------------------------------
# Scales: the architecture files, and the toy widths of the CI scale
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Everything a scale changes; ``None`` keeps the preset's value."""

    resolution: int
    device: str
    precision: str | None
    prompts: int  # prompts per measured epoch
    group_size: int
    sample_batch_size: int | None = None
    train_batch_size: int | None = None
    gradient_accumulation: int | None = None
    num_steps: int | None = None
    clip_tokens: int = CLIP_TOKENS
    t5_tokens: int | None = None  # None: the preset's model_options.max_sequence_length
    # per-component config overrides on top of configs/gpu/*.json
    transformer: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    clip_text: dict = field(default_factory=dict)
    clip_vision: dict = field(default_factory=dict)
    clip_projection_dim: int | None = None
    threads: int = 0  # torch CPU threads (0: torch's default)


SCALES = {
    # 2 prompts x 16 = 32 samples: two full rollout batches (16) and four update micro-batches (8) of
    # the presets, small enough that the six runs fit the 8-minute device budget.
    "sd35m": Scale(resolution=512, device="cuda", precision=None, prompts=2, group_size=16),
    "tiny": Scale(
        resolution=64,
        device="cpu",
        precision="fp32",
        prompts=2,
        group_size=2,
        sample_batch_size=4,
        train_batch_size=2,
        gradient_accumulation=2,
        num_steps=4,
        clip_tokens=8,
        t5_tokens=8,
        transformer=dict(
            num_layers=2,
            num_attention_heads=2,
            attention_head_dim=8,
            caption_projection_dim=16,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            dual_attention_layers=[0],
            sample_size=8,
            pos_embed_max_size=16,
        ),
        vae=dict(block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4, sample_size=64),
        clip_text=dict(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=16
        ),
        clip_vision=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            patch_size=8,
            image_size=32,
            projection_dim=16,
        ),
        clip_projection_dim=16,
        threads=1,
    ),
}


def load_architecture(name: str) -> dict:
    """A configs/gpu JSON without its provenance keys (those starting with '_')."""
    data = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def transformer_config(scale: Scale) -> dict:
    return {**load_architecture("sd35m-transformer.json"), **scale.transformer}


def vae_config(scale: Scale) -> dict:
    return {**load_architecture("sd35m-vae.json"), **scale.vae}


def clip_architecture(scale: Scale) -> dict:
    arch = load_architecture("pickscore-clip-h14.json")
    return {
        **arch,
        "text_config": {**arch["text_config"], **scale.clip_text},
        "vision_config": {**arch["vision_config"], **scale.clip_vision},
        "projection_dim": scale.clip_projection_dim or arch["projection_dim"],
    }


def clip_config(scale: Scale, vocab_size: int | None = None):
    from transformers import CLIPConfig

    arch = clip_architecture(scale)
    text = {**arch["text_config"], "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    if vocab_size is not None and scale.clip_text:  # toy scale: the toy tokenizer's vocabulary
        text["vocab_size"] = vocab_size
    return CLIPConfig(
        text_config=text,
        vision_config=arch["vision_config"],
        projection_dim=arch["projection_dim"],
        logit_scale_init_value=arch["logit_scale_init_value"],
    )


def meta_parameter_counts(scale: Scale) -> dict[str, int]:
    """Parameter and buffer counts of the scale's components, built on the meta device (no memory)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPModel

    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**transformer_config(scale))
        vae = AutoencoderKL(**vae_config(scale))
        clip = CLIPModel(clip_config(scale))
    return {
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        # SD3's fixed sin-cos position table (pos_embed_max_size^2 x width) is a buffer stored in the checkpoint
        "transformer_buffers": sum(b.numel() for b in transformer.buffers()),
        "vae_params": sum(p.numel() for p in vae.parameters()),
        "reward_params": sum(p.numel() for p in clip.parameters()),
    }


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------
class Clock:
    """Seconds and peak memory per top-level phase (``phase``), seconds of nested work (``timed``),
    and transformer sequences per phase and grad mode. CUDA is synchronised at every boundary, so a
    phase's seconds include its queued kernels."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, float] = {}
        self.sequences: dict[str, int] = {}
        self.images_decoded = 0
        self.current = "other"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_memory_gb(self) -> float:
        """CUDA: torch.cuda.max_memory_allocated since the phase began; CPU: the process's peak RSS so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.current, started = name, time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.peak_gb[name] = max(self.peak_gb.get(name, 0.0), self.peak_memory_gb())
            self.current = "other"

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        self.sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            key = f"{name}@{self.current}"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

    def count(self, sequences: int) -> None:
        key = f"{self.current}:{'grad' if torch.is_grad_enabled() else 'nograd'}"
        self.sequences[key] = self.sequences.get(key, 0) + sequences


class BudgetExceeded(Exception):
    pass


@contextmanager
def budget_alarm(seconds_left: float) -> Iterator[None]:
    """Raise ``BudgetExceeded`` in the main thread once ``seconds_left`` have passed (SIGALRM), and
    again every second until the block is left: an exception raised where Python ignores it (a
    finaliser, a callback) must not lose the stop."""

    def _raise(signum, frame):
        raise BudgetExceeded

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(seconds_left, 1e-3), 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------
def _sd3_adapter_class():
    from vgpo.models.sd3 import SD3FlowModel

    class RandomTextSD3(SD3FlowModel):
        """The project's SD3 adapter with random prompt embeddings of the real shapes in place of the
        text encoders (a prompt's embedding is a function of its text), decoding timed and transformer
        sequences counted by ``clock``."""

        def __init__(self, pipeline, resolution, *, clock: Clock, text_tokens: int, **kwargs):
            super().__init__(pipeline, resolution, **kwargs)
            self.clock = clock
            self.text_tokens = text_tokens
            cfg = self.transformer.config
            self.joint_dim, self.pooled_dim = cfg.joint_attention_dim, cfg.pooled_projection_dim

        @torch.no_grad()
        def encode_prompts(self, prompts: Sequence[str]):
            from vgpo.utils import derive_seed

            embeds, pooled = [], []
            for text in prompts:
                gen = torch.Generator(self.device).manual_seed(derive_seed("prompt", text))
                embeds.append(torch.randn(self.text_tokens, self.joint_dim, generator=gen, device=self.device))
                pooled.append(torch.randn(self.pooled_dim, generator=gen, device=self.device))
            return {
                "prompt_embeds": torch.stack(embeds).to(self.dtype),
                "pooled_prompt_embeds": torch.stack(pooled).to(self.dtype),
            }

        def velocity(self, x, sigma, cond):
            self.clock.count(x.shape[0])
            return super().velocity(x, sigma, cond)

        def decode(self, x):
            self.clock.images_decoded += x.shape[0]
            with self.clock.timed("decode"):
                return super().decode(x)

    return RandomTextSD3


def build_model(scale: Scale, model_options: dict, clock: Clock, device: torch.device):
    """The random-weight SD3.5-M pipeline behind the project's adapter (LoRA, precision from the preset)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    scheduler = FlowMatchEulerDiscreteScheduler(**load_architecture("sd35m-scheduler.json"))
    with torch.device(device):  # initialise on the device: a CPU init of 2.2B weights takes minutes
        transformer = SD3Transformer2DModel(**transformer_config(scale))
        vae = AutoencoderKL(**vae_config(scale))
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    t5_tokens = scale.t5_tokens or int(model_options.get("max_sequence_length", 256))
    return _sd3_adapter_class()(
        pipeline,
        scale.resolution,
        clock=clock,
        text_tokens=scale.clip_tokens + t5_tokens,
        device=device,
        precision=scale.precision or model_options.get("precision"),
        lora=model_options.get("lora"),
        gradient_checkpointing=False,
        max_sequence_length=t5_tokens,
    )


def _clip_tokenizer():
    """A CLIP tokenizer over single letters (no merges): each one-letter word is one token, so a prompt
    of n letters is n + 2 tokens, about a real prompt's BPE length for n ~ 20."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_TOKENS)


def build_reward(scale: Scale, reward_spec: Any, device: torch.device):
    """The preset's ``pickscore`` reward, loaded by the project's reward code from a random CLIP ViT-H/14
    saved to a temporary folder (removed after loading). Returns (reward, parameter count)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from vgpo.rewards import build

    if not isinstance(reward_spec, dict) or list(reward_spec) != ["pickscore"]:
        raise SystemExit(f"gpu_scale: the preset's reward must be {{pickscore: ...}}, got {reward_spec!r}")
    tokenizer = _clip_tokenizer()
    config = clip_config(scale, vocab_size=len(tokenizer))
    size = config.vision_config.image_size
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tokenizer,
    )
    folder = tempfile.mkdtemp(prefix="gpu_scale_clip_")
    try:
        with torch.device(device):
            clip = CLIPModel(config)
        if device.type == "cuda":
            clip = clip.to(torch.bfloat16)  # half the bytes through the disk; the reward casts to its dtype
        clip.save_pretrained(folder)
        processor.save_pretrained(folder)
        n_params = sum(p.numel() for p in clip.parameters())
        del clip
        options = dict(reward_spec["pickscore"] or {})
        options.update(model_path=folder, processor_path=folder, local_files_only=True, device=str(device))
        return build({"pickscore": options}), n_params
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TimedReward:
    """The reward, its calls timed by ``clock``."""

    def __init__(self, reward, clock: Clock):
        self.reward, self.clock = reward, clock

    def __call__(self, images, prompts, metadata):
        with self.clock.timed("reward"):
            return self.reward(images, prompts, metadata)


# --------------------------------------------------------------------------------------------------
# The trainer's phases (the one place that calls vgpo.train.trainer; adapt here if it is refactored)
# --------------------------------------------------------------------------------------------------
def run_epoch(
    cfg, model, reward_fn, prompts: list[dict], epoch: int, sigmas: torch.Tensor, params, optimizer, ema, clock: Clock
) -> dict:
    """One training epoch as ``vgpo.train.trainer.train`` runs it on one process: sample, score,
    advantages, update (no evaluation, no checkpoint)."""
    from vgpo.train import trainer
    from vgpo.train.advantages import zero_std_groups

    with clock.phase("sample"):
        batch = trainer.sample_epoch(cfg, model, prompts, epoch, sigmas)
    with clock.phase("score"):
        scores = trainer.score_epoch(cfg, model, reward_fn, batch)
    with clock.phase("advantages"):
        advantages, _ = trainer.compute_advantages(cfg, scores.final, scores.values, batch.group_ids)
        zero_std = zero_std_groups(scores.final, batch.group_ids)
        keep = ~zero_std if cfg.drops_zero_std else torch.ones_like(zero_std)
        # The update multiplies the advantages with log-probs on the model's device.
        advantages = advantages.to(model.device)
    with clock.phase("update"):
        stats = trainer.update(cfg, model, params, optimizer, ema, batch, advantages, keep, epoch)
    return {
        "samples": len(batch.metadata),
        "images_scored": scores.images_scored,
        "kept_samples": int(keep.sum()),
        "optimizer_steps": stats.optimizer_steps,
        "trainer_fwd_bwd_s": stats.fwd_bwd_s,
        "reward_mean": float(scores.final.float().mean()),
    }


# --------------------------------------------------------------------------------------------------
# FLOPs and the network's own speed
# --------------------------------------------------------------------------------------------------
def _count_cpu_attention() -> None:
    """Give FlopCounterMode the CPU attention kernels' FLOPs (torch counts only the CUDA ones), so that
    the CPU scale's counts include attention as the GPU's do."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    forward, backward = (
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_flash_attention_for_cpu_backward,
    )
    if forward not in fc.flop_registry and forward.default not in fc.flop_registry:

        @fc.register_flop_formula(forward)
        def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward not in fc.flop_registry and backward.default not in fc.flop_registry:

        @fc.register_flop_formula(backward)
        def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _network_inputs(model, n: int):
    x = torch.randn(n, *model.latent_shape, device=model.device)
    sigma = torch.full((n,), 0.5, device=model.device)
    return x, sigma, model.encode_prompts([f"probe {i}" for i in range(n)])


def count_flops(model, reward_fn, rollout_seqs: int, update_seqs: int) -> dict:
    """Model FLOPs (FlopCounterMode, once per shape): transformer forward and forward+backward per
    sequence (counted without gradient checkpointing: its recomputation is not useful work), VAE decode
    and reward per image."""
    x, sigma, cond = _network_inputs(model, rollout_seqs)
    with torch.no_grad():
        fwd = _flops(lambda: model.velocity(x, sigma, cond)) / rollout_seqs
    x, sigma, cond = _network_inputs(model, update_seqs)

    def fwd_bwd():
        model.velocity(x, sigma, cond).float().square().mean().backward()

    fwd_bwd_flops = _flops(fwd_bwd) / update_seqs
    for p in model.trainable_parameters():
        p.grad = None
    z = torch.randn(1, *model.latent_shape, device=model.device)
    with torch.no_grad():
        decode = _flops(lambda: model.decode(z))
        image = model.decode(z).cpu()
    reward = _flops(lambda: reward_fn(image, ["a b c d e f g h i j k l m n o p q r s t"], [{}]))
    # FlopCounterMode knows only some attention kernels: say whether the one this device picks counted.
    q = torch.randn(1, 2, 64, 64, device=model.device, dtype=model.dtype)
    attention_counted = _flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) > 0
    return {
        "transformer_fwd_per_seq": fwd,
        "transformer_fwd_bwd_per_seq": fwd_bwd_flops,
        "vae_decode_per_image": decode,
        "reward_per_image": reward,
        "attention_counted": attention_counted,
    }


def meta_flops(scale: Scale, model_options: dict, t5_tokens: int | None = None) -> dict:
    """``count_flops``'s per-sequence and per-image counts, from the components built on the meta device
    (shapes only: no memory, no device, seconds on a CPU). The transformer carries the preset's LoRA;
    the reward's text is 22 tokens as in the measured runs."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPModel

    from vgpo.models.lora import LoraOptions, add_lora

    text_tokens = scale.clip_tokens + (
        t5_tokens or scale.t5_tokens or int(model_options.get("max_sequence_length", 256))
    )
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**transformer_config(scale))
        add_lora(transformer, LoraOptions.from_spec(model_options.get("lora")))
        vae = AutoencoderKL(**vae_config(scale))
        clip = CLIPModel(clip_config(scale))
        cfg = transformer.config
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latents = (cfg.in_channels, scale.resolution // factor, scale.resolution // factor)
        x, t = torch.randn(1, *latents), torch.full((1,), 500.0)
        c, pooled = torch.randn(1, text_tokens, cfg.joint_attention_dim), torch.randn(1, cfg.pooled_projection_dim)
        size = clip.config.vision_config.image_size
        pixels, ids = torch.randn(1, 3, size, size), torch.ones(1, 22, dtype=torch.long)

    def forward():
        return transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=c, pooled_projections=pooled, return_dict=False
        )[0]

    with torch.no_grad():
        fwd = _flops(forward)
        decode = _flops(lambda: vae.decode(x))
        reward = _flops(lambda: (clip.get_image_features(pixel_values=pixels), clip.get_text_features(input_ids=ids)))
    fwd_bwd = _flops(lambda: forward().float().square().mean().backward())
    return {
        "transformer_fwd_per_seq": fwd,
        "transformer_fwd_bwd_per_seq": fwd_bwd,
        "vae_decode_per_image": decode,
        "reward_per_image": reward,
        "text_tokens": text_tokens,
    }


def flops_per_sample(flops: dict, cfg) -> dict:
    """Model FLOPs per sample of an epoch, by phase, from per-sequence counts and the training settings:
    the rollout's steps and the update's trained steps (x2 under CFG; the update's KL reference adds a
    forward when beta > 0), and the final image plus, with TCRM, one projection per scored step before the
    last (the trainer's ``scored_steps``), each decoded and scored."""
    from vgpo.train.advantages import scored_steps

    cfg_factor = 1 if cfg.guidance_scale == 1.0 else 2
    images = 1 + (
        sum(1 for i in scored_steps(cfg.num_steps, cfg.tcrm_every) if i < cfg.num_steps - 1) if cfg.dense_rewards else 0
    )
    update = (
        cfg.trained_steps
        * cfg_factor
        * (flops["transformer_fwd_bwd_per_seq"] + (flops["transformer_fwd_per_seq"] if cfg.beta > 0 else 0))
    )
    out = {
        "rollout": cfg.num_steps * cfg_factor * flops["transformer_fwd_per_seq"],
        "decode": images * flops["vae_decode_per_image"],
        "reward": images * flops["reward_per_image"],
        "update": update,
        "images_scored": images,
    }
    out["total"] = out["rollout"] + out["decode"] + out["reward"] + out["update"]
    return out


def time_network(model, clock: Clock, rollout_seqs: int, update_seqs: int, reps: int) -> dict:
    """Seconds per sequence of the transformer alone (synchronised, after one warm-up call) at the
    rollout's batch (forward) and the update's batch (forward, and forward+backward), with the
    adapter's current gradient-checkpointing setting."""

    def per_seq(fn, n: int) -> float:
        fn()
        clock.sync()
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        clock.sync()
        return (time.perf_counter() - started) / reps / n

    xr, sr, cr = _network_inputs(model, rollout_seqs)
    xu, su, cu = _network_inputs(model, update_seqs)

    def fwd(x, s, c):
        with torch.no_grad():
            model.velocity(x, s, c)

    def fwd_bwd():
        model.velocity(xu, su, cu).float().square().mean().backward()

    result = {
        "fwd_s_per_seq_rollout_batch": per_seq(lambda: fwd(xr, sr, cr), rollout_seqs),
        "fwd_s_per_seq_update_batch": per_seq(lambda: fwd(xu, su, cu), update_seqs),
        "fwd_bwd_s_per_seq": per_seq(fwd_bwd, update_seqs),
    }
    for p in model.trainable_parameters():
        p.grad = None
    return result


# --------------------------------------------------------------------------------------------------
# Runs and their summaries
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    algorithm: str
    tcrm_every: int
    checkpointing: bool

    @property
    def name(self) -> str:
        base = "grpo" if self.algorithm == "grpo" else f"vgpo-tcrm{self.tcrm_every}"
        return base + ("-ckpt" if self.checkpointing else "")


def plan_runs(tcrm_every: Sequence[int], checkpointing: Sequence[str]) -> list[Run]:
    runs: list[Run] = []
    if "off" in checkpointing:
        runs += [Run("grpo", 1, False)] + [Run("vgpo", k, False) for k in tcrm_every]
    if "on" in checkpointing:
        runs += [Run("grpo", 1, True), Run("vgpo", tcrm_every[0], True)]
    return runs


def epoch_summary(raw: dict, clock: Clock, flops: dict, network: dict, peak_tflops: float | None) -> dict:
    """Phases in seconds (they add up to ``epoch_s``), throughput, memory and FLOP rates of one epoch."""
    s = clock.seconds
    decode_sample, decode_score = s.get("decode@sample", 0.0), s.get("decode@score", 0.0)
    reward = s.get("reward@score", 0.0)
    phases = {
        "rollout": s["sample"] - decode_sample,
        "decode": decode_sample + decode_score,
        "reward": reward,
        "score_other": s["score"] - decode_score - reward,
        "advantages": s["advantages"],
        "update": s["update"],
    }
    epoch_s = s["sample"] + s["score"] + s["advantages"] + s["update"]
    seqs = {
        "rollout": clock.sequences.get("sample:nograd", 0),
        "update_grad": clock.sequences.get("update:grad", 0),
        "update_nograd": clock.sequences.get("update:nograd", 0),
    }
    images_decoded = clock.images_decoded
    update_flops = (
        flops["transformer_fwd_bwd_per_seq"] * seqs["update_grad"]
        + flops["transformer_fwd_per_seq"] * seqs["update_nograd"]
    )
    phase_flops = {
        "rollout": flops["transformer_fwd_per_seq"] * seqs["rollout"],
        "decode": flops["vae_decode_per_image"] * images_decoded,
        "reward": flops["reward_per_image"] * raw["images_scored"],
        "update": update_flops,
    }
    tflops = {k: (v / phases[k] / 1e12 if phases[k] > 0 else None) for k, v in phase_flops.items()}
    tflops["epoch"] = sum(phase_flops.values()) / epoch_s / 1e12
    network_s = (
        network["fwd_bwd_s_per_seq"] * seqs["update_grad"]
        + network["fwd_s_per_seq_update_batch"] * seqs["update_nograd"]
    )
    out = {
        **raw,
        "phases_s": phases,
        "epoch_s": epoch_s,
        "epoch_s_per_sample": epoch_s / raw["samples"],
        "images_decoded": images_decoded,
        "images_per_s": raw["samples"] / epoch_s,
        "scored_images_per_s": raw["images_scored"] / epoch_s,
        "transformer_sequences": seqs,
        "peak_memory_gb": {
            **{k: clock.peak_gb[k] for k in ("sample", "score", "advantages", "update")},
            "max": max(clock.peak_gb.values()),
        },
        "network_s_in_update": network_s,
        "network_share_of_update": network_s / phases["update"] if phases["update"] > 0 else None,
        "achieved_tflops": tflops,
        "update_fraction_of_peak": (tflops["update"] / peak_tflops) if peak_tflops and tflops["update"] else None,
    }
    return out


def mean_summary(epochs: list[dict]) -> dict:
    """The epochs after the first when there are several (the first may carry one-off costs), else the one."""
    use = epochs[1:] if len(epochs) > 1 else epochs

    def avg(values):
        values = list(values)
        if all(isinstance(v, dict) for v in values):
            return {k: avg(v[k] for v in values) for k in values[0]}
        if any(v is None for v in values):
            return None
        return sum(values) / len(values)

    return {k: avg(e[k] for e in use) for k in use[0]} | {"epochs_averaged": len(use)}


def comparisons(runs: dict) -> dict:
    """VGPO epoch time over GRPO's at the same checkpointing setting."""
    out = {}
    for name, run in runs.items():
        if run["algorithm"] != "vgpo" or not run.get("summary"):
            continue
        grpo = runs.get("grpo-ckpt" if run["gradient_checkpointing"] else "grpo")
        if grpo and grpo.get("summary"):
            out[f"{name}/{'grpo-ckpt' if run['gradient_checkpointing'] else 'grpo'}"] = (
                run["summary"]["epoch_s"] / grpo["summary"]["epoch_s"]
            )
    return out


def machine() -> dict:
    import importlib.metadata as md

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    for pkg in ("diffusers", "transformers", "peft", "accelerate"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30, gpu_sms=props.multi_processor_count)
    return info


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), required=True, help="sd35m: the real sizes (GPU); tiny: CI")
    parser.add_argument("--out", required=True, help=f"folder for {RESULT_NAME}")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="seconds from process start after which the work stops and the JSON is written",
    )
    parser.add_argument("--epochs", type=int, default=1, help="measured epochs per run (a warm-up precedes all runs)")
    parser.add_argument("--tcrm-every", type=int, nargs="+", default=[1, 2, 5], help="VGPO runs, one per value")
    parser.add_argument(
        "--checkpointing",
        nargs="+",
        choices=("off", "on"),
        default=["off", "on"],
        help="gradient checkpointing settings to run",
    )
    parser.add_argument("--prompts", type=int, default=None, help="prompts per measured epoch (default: the scale's)")
    parser.add_argument("--group-size", type=int, default=None, help="images per prompt (default: the scale's)")
    parser.add_argument(
        "--t5-tokens",
        type=int,
        default=None,
        help="T5 tokens of the random prompt embeddings (default: the preset's max_sequence_length)",
    )
    parser.add_argument("--device", default=None, help="default: the scale's (sd35m: cuda, tiny: cpu)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak (H200 bf16 matrix products: 790 measured); fractions of it are reported",
    )
    parser.add_argument("--network-reps", type=int, default=3, help="timed calls per shape of the network-alone timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the scale's; 0: torch's)"
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="count model FLOPs on the meta device and plan them per sample and run (no device, no timing)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.budget_s <= 0 or any(k < 1 for k in args.tcrm_every):
        parser.error("--epochs and --tcrm-every must be >= 1 and --budget-s > 0")
    return args


def training_config(run: Run, scale: Scale, args: argparse.Namespace, device: torch.device):
    from vgpo.config import from_dict, load_yaml
    from vgpo.train import TrainConfig

    data = load_yaml(PRESETS[run.algorithm])
    data.update(
        out=str(Path(args.out) / "unused"),
        epochs=args.epochs,
        device=str(device),
        seed=args.seed,
        prompts_per_epoch=args.prompts or scale.prompts,
        group_size=args.group_size or scale.group_size,
    )
    for name in ("sample_batch_size", "train_batch_size", "gradient_accumulation", "num_steps"):
        if getattr(scale, name) is not None:
            data[name] = getattr(scale, name)
    if run.algorithm == "vgpo":
        data["tcrm_every"] = run.tcrm_every
    # Every sample is updated, whatever the random rewards: a zero-std group dropped by GRPO would time
    # an update that a real reward (PickScore's continuous scores) does not skip.
    data["drop_zero_std_groups"] = False
    return from_dict(TrainConfig, data, f"{PRESETS[run.algorithm].name}: ")


def main(argv: Sequence[str] | None = None, started: float | None = None) -> Path:
    """Run the measurement; ``--budget-s`` counts from ``started`` (``time.monotonic()``; default: now)."""
    started = time.monotonic() if started is None else started
    args = parse_args(argv)
    scale = SCALES[args.scale]
    device = torch.device(args.device or scale.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(args.tcrm_every, args.checkpointing)
    result: dict[str, Any] = {
        "status": "running",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "scale": args.scale,
        "budget_s": args.budget_s,
        "peak_tflops": args.peak_tflops,
        "machine": machine(),
        "architecture": {
            "transformer": transformer_config(scale),
            "vae": vae_config(scale),
            "reward_clip": clip_architecture(scale),
        },
        "runs": {},
        "not_run": [r.name for r in runs],
    }

    # Heavy imports before the budget alarm is armed: an import interrupted half-way can leave a
    # package unusable in this process.
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    import vgpo.models.sd3  # noqa: F401
    import vgpo.rewards.hf  # noqa: F401
    import vgpo.train.trainer  # noqa: F401
    from vgpo.utils import atomic_write_text

    def write() -> None:
        result["elapsed_s"] = time.monotonic() - started
        result["comparisons"] = {"epoch_s_ratio": comparisons(result["runs"])}
        atomic_write_text(json.dumps(result, indent=2) + "\n", out / RESULT_NAME)

    if args.flops_only:
        _plan_flops(args, scale, runs, result)
        result["status"] = "flops_only"
        write()
        print(f"gpu_scale: FLOP plan -> {out / RESULT_NAME}")
        return out / RESULT_NAME
    write()
    try:
        with budget_alarm(args.budget_s - (time.monotonic() - started)):
            _measure(args, scale, device, runs, result, write)
        result["status"] = "complete"
    except BudgetExceeded:
        result["status"] = "stopped_by_budget"
    write()
    print(
        f"gpu_scale: {result['status']}, {len(result['runs'])} runs, {result['elapsed_s']:.0f} s -> {out / RESULT_NAME}"
    )
    return out / RESULT_NAME


def training_settings(cfg, args: argparse.Namespace, preset: dict) -> dict:
    """The training settings the runs share (from the presets and the scale), for the JSON."""
    cfg_factor = 1 if cfg.guidance_scale == 1.0 else 2
    return {
        "presets": {k: str(v.relative_to(ROOT)) for k, v in PRESETS.items()},
        "samples_per_epoch": cfg.prompts_per_epoch * cfg.group_size,
        "prompts_per_epoch": cfg.prompts_per_epoch,
        "group_size": cfg.group_size,
        "sample_batch_size": cfg.sample_batch_size,
        "train_batch_size": cfg.train_batch_size,
        "gradient_accumulation": cfg.gradient_accumulation,
        "num_steps": cfg.num_steps,
        "trained_steps": cfg.trained_steps,
        "guidance_scale": cfg.guidance_scale,
        "beta": cfg.beta,
        "epochs": args.epochs,
        "rollout_batch_sequences": cfg_factor * cfg.sample_batch_size,
        "update_batch_sequences": cfg_factor * cfg.train_batch_size,
        "reward": preset["reward"],
        "model_options": preset.get("model_options", {}),
    }


def _plan_flops(args, scale: Scale, runs: list[Run], result: dict) -> None:
    """``--flops-only``: the model FLOPs of every planned run, per sample, counted on the meta device."""
    from vgpo.config import load_yaml

    preset = load_yaml(PRESETS["vgpo"])
    result["settings"] = training_settings(training_config(runs[0], scale, args, torch.device("cpu")), args, preset)
    result["flops"] = meta_flops(scale, dict(preset.get("model_options", {})), args.t5_tokens)
    plan = {
        run.name: flops_per_sample(result["flops"], training_config(run, scale, args, torch.device("cpu")))
        for run in runs
        if not run.checkpointing
    }
    result["flops_per_sample"] = plan
    result["flops_ratio"] = {
        f"{name}/grpo": p["total"] / plan["grpo"]["total"] for name, p in plan.items() if name != "grpo"
    }
    result["not_run"] = [r.name for r in runs]


def _measure(args, scale: Scale, device: torch.device, runs: list[Run], result: dict, write) -> None:
    import diffusers
    import transformers

    from vgpo.config import load_yaml

    diffusers.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    threads = scale.threads if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    clock = Clock(device)
    preset = load_yaml(PRESETS["vgpo"])
    started = time.perf_counter()
    model = build_model(scale, dict(preset.get("model_options", {})), clock, device)
    reward, reward_params = build_reward(scale, preset["reward"], device)
    reward_fn = TimedReward(reward, clock)
    params = model.trainable_parameters()
    result["model"] = {
        "transformer_params": sum(p.numel() for p in model.transformer.parameters()) - sum(p.numel() for p in params),
        "transformer_buffers": sum(b.numel() for b in model.transformer.buffers()),
        "lora_params": sum(p.numel() for p in params),
        "lora": vars(model.lora_options) | {"target_modules": list(model.lora_options.target_modules)},
        "vae_params": sum(p.numel() for p in model.vae.parameters()),
        "reward_params": reward_params,
        "precision": str(model.dtype),
        "resolution": list(model.resolution),
        "latent_shape": list(model.latent_shape),
        "text_tokens": model.text_tokens,
        "joint_attention_dim": model.joint_dim,
        "pooled_dim": model.pooled_dim,
    }
    result["setup_s"] = {"build": time.perf_counter() - started}
    write()

    cfg0 = training_config(runs[0], scale, args, device)
    result["settings"] = training_settings(cfg0, args, preset)
    rollout_seqs, update_seqs = (
        result["settings"]["rollout_batch_sequences"],
        result["settings"]["update_batch_sequences"],
    )
    started = time.perf_counter()
    with clock.phase("flops"):
        result["flops"] = count_flops(model, reward, rollout_seqs, update_seqs)
    result["setup_s"]["flops"] = time.perf_counter() - started
    network: dict[bool, dict] = {}
    for setting in sorted({r.checkpointing for r in runs}):
        started = time.perf_counter()
        _set_checkpointing(model, setting)
        label = "ckpt" if setting else "no_ckpt"
        with clock.phase(f"network_{label}"):
            network[setting] = time_network(model, clock, rollout_seqs, update_seqs, args.network_reps)
        f = result["flops"]
        network[setting]["fwd_tflops"] = (
            f["transformer_fwd_per_seq"] / network[setting]["fwd_s_per_seq_rollout_batch"] / 1e12
        )
        network[setting]["fwd_bwd_tflops"] = (
            f["transformer_fwd_bwd_per_seq"] / network[setting]["fwd_bwd_s_per_seq"] / 1e12
        )
        network[setting]["peak_memory_gb"] = clock.peak_gb[f"network_{label}"]
        result.setdefault("network", {})[label] = network[setting]
        result["setup_s"][f"network_{label}"] = time.perf_counter() - started
        write()

    prompts = [
        {"prompt": " ".join(string.ascii_lowercase[(i + j) % 26] for j in range(20)), "tag": ""}
        for i in range(max(64, cfg0.prompts_per_epoch))
    ]
    # One small unmeasured epoch through every phase first (lazy initialisation, allocator growth,
    # optimizer state), so that the first measured run does not pay for it alone.
    started = time.perf_counter()
    warm = next((r for r in runs if r.algorithm == "vgpo"), runs[0])
    _set_checkpointing(model, warm.checkpointing)
    cfg = replace(
        training_config(warm, scale, args, device), prompts_per_epoch=1, group_size=max(2, cfg0.train_batch_size)
    )
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    run_epoch(cfg, model, reward_fn, prompts, 0, model.schedule(cfg.num_steps), params, optimizer, None, clock)
    del optimizer
    result["setup_s"]["warmup_epoch"] = time.perf_counter() - started
    write()

    for run in runs:
        cfg = training_config(run, scale, args, device)
        _set_checkpointing(model, run.checkpointing)
        sigmas = model.schedule(cfg.num_steps)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
        entry = {
            "algorithm": run.algorithm,
            "tcrm_every": cfg.tcrm_every if run.algorithm == "vgpo" else None,
            "gradient_checkpointing": run.checkpointing,
            "complete": False,
            "flops_per_sample": flops_per_sample(result["flops"], cfg),
            "epochs": [],
        }
        result["runs"][run.name] = entry
        for epoch in range(args.epochs):
            clock.reset()
            raw = run_epoch(cfg, model, reward_fn, prompts, epoch, sigmas, params, optimizer, ema, clock)
            entry["epochs"].append(
                epoch_summary(raw, clock, result["flops"], network[run.checkpointing], args.peak_tflops)
            )
            entry["summary"] = mean_summary(entry["epochs"])
            write()
        entry["complete"] = True
        result["not_run"].remove(run.name)
        del optimizer, ema
        write()


def _set_checkpointing(model, enabled: bool) -> None:
    if enabled:
        model.transformer.enable_gradient_checkpointing()
    else:
        model.transformer.disable_gradient_checkpointing()


if __name__ == "__main__":
    main(started=_STARTED)
