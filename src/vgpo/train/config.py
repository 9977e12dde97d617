"""The training config: one typed dataclass, a help line per field, validated on load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vgpo.config import check_fields, doc
from vgpo.errors import VgpoError
from vgpo.evaluate import EvalConfig
from vgpo.train import algorithms
from vgpo.train.fm_losses import ADVANTAGE_MODES as ADVANTAGE_INTERP

ALGORITHMS = ("grpo", "vgpo", "tcrm", "adae")  # the VGPO paper's four (the bench suites' main rows)


@dataclass
class TrainConfig:
    # --- run ---
    out: str = doc("runs/train", "output folder: metrics.jsonl, checkpoints/, eval/, reward.png")
    seed: int = doc(0, "seed of prompt choice, sampling noise and minibatch order (per epoch)")
    epochs: int = doc(40, "sampling + update rounds")
    threads: int = doc(0, "torch CPU threads (0: torch's default)")
    # --- model and world ---
    model: str = doc("tiny", "model adapter: tiny, sd3, flux")
    checkpoint: str = doc("checkpoints/shapes-base", "tiny: checkpoint folder; sd3/flux: local path or hub id")
    model_options: dict = doc({}, "extra adapter options (tiny: lora; sd3/flux: resolution, precision, lora, ...)")
    device: str = doc("cpu", "torch device")
    fsdp: bool = doc(
        False,
        "shard the trained network over processes with FSDP2 (torch fully_shard): weights, "
        "gradients and optimizer state; for models that do not fit one device (a 1-process run has nothing to shard)",
    )
    world: str = doc("shapes", "prompt world: shapes, text")
    train_prompts: str = doc("", "prompt file for training (default: the world's train split)")
    test_prompts: str = doc("", "prompt file for evaluation (default: the world's test split)")
    reward: str | dict = doc("", "reward name or {name: weight} (default: the world's reward)")
    # --- sampling (Flow-GRPO: 10 train steps, noise level 0.7) ---
    num_steps: int = doc(10, "sampling steps of training rollouts (Flow-GRPO: 10)")
    noise_level: float = doc(
        0.7, "SDE noise level a of training rollouts (Flow-GRPO: 0.7; CPS: 0.8, in (0, 1]); unused by sampler ode"
    )
    sde_steps: int = doc(
        0,
        "SDE on the first this many steps only, the Euler ODE after, and only those steps trained "
        "(as Flow-GRPO-Fast and MixGRPO); 0: SDE at every step (Flow-GRPO)",
    )
    shared_init_noise: bool = doc(
        False,
        "a group's images start from the same initial noise, so only the SDE steps "
        "(the policy's actions) tell them apart (DanceGRPO's shared noise)",
    )
    guidance_scale: float = doc(
        4.5,
        "CFG scale in rollouts and in the PPO update (Flow-GRPO: 4.5); the flow-matching "
        "objectives (nft, awm) train the conditional velocity without CFG, and their presets "
        "sample without it too: DiffusionNFT on CFG-4.5 rollouts collapsed on Shapes "
        "(docs/learning-study.md, section 43)",
    )
    cfg_uncond_grad: bool = doc(
        False,
        "PPO update: back-propagate through the unconditional branch of the guided velocity "
        "too (exact gradient); off: detached, as Flow-GRPO (noise_pred_uncond.detach())",
    )
    prompts_per_epoch: int = doc(8, "distinct prompts per epoch (over all processes)")
    group_size: int = doc(8, "images per prompt, G (paper: 24)")
    sample_batch_size: int = doc(64, "images per rollout forward batch")
    # --- update (Flow-GRPO's PPO) ---
    train_batch_size: int = doc(16, "samples per micro-batch of the update")
    gradient_accumulation: int = doc(4, "micro-batches per optimizer step (the loss is averaged over all)")
    inner_epochs: int = doc(1, "passes over an epoch's samples (Flow-GRPO: 1)")
    timestep_fraction: float = doc(1.0, "train the first floor(f*T) steps (Flow-GRPO: timestep_fraction)")
    lr: float = doc(1e-4, "AdamW learning rate")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    adam_eps: float = doc(1e-8, "AdamW epsilon (Flow-GRPO: 1e-8)")
    max_grad_norm: float = doc(1.0, "gradient-norm clip")
    clip_range: float = doc(1e-3, "PPO ratio clip epsilon (Flow-GRPO SD3.5: 1e-4; see README for our scale)")
    old_log_probs: Literal["auto", "rollout", "recompute"] = doc(
        "auto",
        "PPO's old log-probs: rollout (the sampler's own, as Flow-GRPO), recompute (the update's own forward "
        "pass gives them, in the update's micro-batches, before any weight changes: verl's recomputed "
        "old log-prob), auto (recompute where the network computes below float32, whose kernels may round "
        "a sample differently at the rollout's batch size: bf16 on an AMX CPU put |ratio - 1| at 1e-3 "
        "at the first step, wider than Flow-GRPO's clip of 1e-4; DanceGRPO#57 reports it on GPUs)",
    )
    adv_clip_max: float = doc(5.0, "advantages clipped to +-this (Flow-GRPO: 5)")
    beta: float = doc(0.0, "KL weight to the reference policy (Flow-GRPO: 0.04 GenEval/OCR, 0.01 PickScore)")
    ema_decay: float = doc(0.9, "EMA of trained weights used for evaluation, per optimizer step (0: off)")
    # --- algorithm ---
    algorithm: Literal["grpo", "vgpo", "tcrm", "adae", "nft", "awm"] = doc(
        "vgpo",
        "preset of sampler + advantage + objective (docs/algorithms.md): grpo: Flow-GRPO; vgpo: TCRM + ADAE; "
        "tcrm: TCRM only; adae: ADAE only (arXiv 2512.12387); nft: DiffusionNFT; awm: Advantage Weighted "
        "Matching; the fields sampler, objective, tcrm, adae, drop_zero_std_groups override its parts",
    )
    sampler: Literal["sde", "cps", "ode"] | None = doc(
        None,
        "rollout sampler: sde (Flow-GRPO), cps (coefficients-preserving, Flow-GRPO's sde_type cps), ode (Euler, "
        "no log-probs) (default: the algorithm's)",
    )
    objective: Literal["ppo", "nft", "awm"] | None = doc(
        None,
        "loss: ppo (Flow-GRPO's clipped policy gradient), nft (DiffusionNFT), awm (Advantage Weighted Matching) "
        "(default: the algorithm's)",
    )
    tcrm: bool | None = doc(None, "TCRM dense values and step weights (default: the algorithm's)")
    adae: bool | None = doc(None, "ADAE absolute term k*Q in the advantage (default: the algorithm's)")
    global_std: bool = doc(False, "normalise by the batch's std instead of the group's (Flow-GRPO option)")
    drop_zero_std_groups: bool | None = doc(
        None,
        "drop samples whose group rewards are all equal (default: the algorithm's: true for grpo, false otherwise)",
    )
    gamma: float = doc(0.9, "TCRM discount of the reward-to-go Q_i (our choice; the paper leaves it open)")
    adae_k: float = doc(0.1, "ADAE absolute-signal weight k, alpha = k*std_g Q (our choice; swept in benchmarks)")
    adae_steps: int = doc(5, "ADAE adds k*Q_i on the first this many steps only (paper: 5)")
    tcrm_every: int = doc(1, "score projections every k-th step, interpolate the rest (1: the paper)")
    # --- flow-matching objectives (nft, awm) ---
    fm_timesteps: int = doc(
        0,
        "training times per sample per update: 0: the sigma of every trained rollout step "
        "(DiffusionNFT); K > 0: K draws uniform in [sigma of the last trained step, sigma_0]",
    )
    fm_advantage_interp: str = doc(
        "linear",
        "advantage at a training time t from the per-step advantages at the "
        "sampler's sigmas (TCRM's Q interpolated at sigma = t): linear, nearest",
    )
    fm_points_per_pass: int = doc(
        1,
        "training points per forward+backward pass: a micro-batch's K points go through the network this many at "
        "a time (P x train_batch_size samples a pass); the same loss and gradient up to float rounding, fewer and "
        "larger passes (faster on CPU, docs/speed.md) at P times the activation memory",
    )
    nft_beta: float = doc(1.0, "DiffusionNFT beta: implicit policies old +- beta*(current - old) (paper: 1)")
    nft_weighting: Literal["adaptive", "none"] = doc(
        "adaptive",
        "DiffusionNFT branch loss: adaptive (x0 error self-normalised per sample, its released code) or "
        "none (plain flow-matching error, the paper's formula)",
    )
    awm_weighting: Literal["uniform", "t", "t2", "ghuber"] = doc(
        "ghuber",
        "AWM surrogate log-likelihood: minus the flow-matching error l, weighted: uniform, t*l, t^2*l, or "
        "ghuber t*((l+d)^p - d^p)/p (AWM's released configs)",
    )
    awm_ghuber_power: float = doc(0.25, "AWM ghuber power p (released configs: 0.25)")
    awm_clip_range: float = doc(1.0, "AWM ratio clip epsilon on exp(lp - lp_old) (released configs: 1; 0: no clipping)")
    awm_old_kl: float = doc(1.0, "AWM weight of the velocity penalty towards the old (EMA) policy (released code: 1)")
    old_policy_decay_rate: float = doc(
        0.001,
        "old policy of nft/awm: after each epoch old <- d*old + (1-d)*current "
        "with d = min(rate*(step - flat), max) at optimizer step `step` "
        "(DiffusionNFT: 0.001, max 0.5, flat 0; 0: on-policy)",
    )
    old_policy_decay_max: float = doc(0.5, "cap of the old policy's decay d (DiffusionNFT: 0.5)")
    old_policy_decay_flat: int = doc(0, "optimizer steps with decay 0 before the ramp (DiffusionNFT: 0)")
    # --- evaluation and checkpoints ---
    eval_every: int = doc(10, "epochs between held-out evaluations (0: only before the first and after the last)")
    eval_base: bool = doc(True, "evaluate the starting model before the first epoch (off: its score is known already)")
    eval_num_steps: int = doc(EvalConfig.num_steps, "ODE steps of held-out evaluation")
    eval_guidance_scale: float = doc(
        0.0,
        "CFG scale of held-out evaluation (0: guidance_scale); lets a run train "
        "without CFG (guidance_scale 1, half the forwards) and be judged with it",
    )
    eval_images_per_prompt: int = doc(EvalConfig.images_per_prompt, "held-out images per test prompt")
    eval_limit: int = doc(EvalConfig.limit, "evaluate on the first N test prompts only (0: all)")
    eval_batch_size: int = doc(EvalConfig.batch_size, "prompts per evaluation batch (results do not depend on it)")
    save_every: int = doc(10, "epochs between checkpoints (the last epoch is always saved)")

    def __post_init__(self) -> None:
        check_fields(self)  # every float finite, the device known
        positive = (
            "epochs",
            "num_steps",
            "prompts_per_epoch",
            "sample_batch_size",
            "train_batch_size",
            "gradient_accumulation",
            "inner_epochs",
            "eval_num_steps",
            "eval_images_per_prompt",
            "eval_batch_size",
            "save_every",
            "tcrm_every",
            "fm_points_per_pass",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise VgpoError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise VgpoError(f"group_size: expected >= 2 (group statistics need two samples), got {self.group_size}")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise VgpoError(f"timestep_fraction: expected in (0, 1], got {self.timestep_fraction}")
        if int(self.timestep_fraction * self.num_steps) < 1:
            raise VgpoError(f"timestep_fraction: {self.timestep_fraction} x num_steps {self.num_steps} trains no step")
        for name in ("lr", "clip_range", "adv_clip_max", "max_grad_norm", "adam_eps"):
            if getattr(self, name) <= 0:
                raise VgpoError(f"{name}: expected > 0, got {getattr(self, name)}")
        if not 0 <= self.sde_steps <= self.num_steps:
            raise VgpoError(f"sde_steps: expected in [0, num_steps={self.num_steps}], got {self.sde_steps}")
        for name in (
            "beta",
            "weight_decay",
            "eval_every",
            "adae_steps",
            "eval_limit",
            "threads",
            "fm_timesteps",
            "old_policy_decay_rate",
            "old_policy_decay_flat",
        ):
            if getattr(self, name) < 0:
                raise VgpoError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise VgpoError(f"ema_decay: expected in [0, 1), got {self.ema_decay}")
        if not 0.0 < self.gamma <= 1.0:
            raise VgpoError(f"gamma: expected in (0, 1], got {self.gamma}")
        if self.guidance_scale < 1.0:
            raise VgpoError(f"guidance_scale: expected >= 1, got {self.guidance_scale}")
        if self.eval_guidance_scale != 0.0 and self.eval_guidance_scale < 1.0:
            raise VgpoError(
                f"eval_guidance_scale: expected 0 (same as guidance_scale) or >= 1, got {self.eval_guidance_scale}"
            )
        for name in ("awm_clip_range", "awm_old_kl"):
            if getattr(self, name) < 0:
                raise VgpoError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.awm_ghuber_power <= 0:
            raise VgpoError(f"awm_ghuber_power: expected > 0, got {self.awm_ghuber_power}")
        if self.nft_beta <= 0:
            raise VgpoError(f"nft_beta: expected > 0, got {self.nft_beta}")
        if not 0.0 <= self.old_policy_decay_max < 1.0:
            raise VgpoError(f"old_policy_decay_max: expected in [0, 1), got {self.old_policy_decay_max}")
        if self.fm_advantage_interp not in ADVANTAGE_INTERP:
            raise VgpoError(
                f"fm_advantage_interp: expected one of {', '.join(ADVANTAGE_INTERP)}, got {self.fm_advantage_interp!r}"
            )
        algorithms.check(self, self.parts)

    # Derived switches: the algorithm's parts (algorithms.py), with the explicitly set fields over its preset.
    @property
    def parts(self) -> algorithms.Parts:
        return algorithms.resolve(self)

    @property
    def dense_rewards(self) -> bool:
        """TCRM: instant rewards of every step's projection."""
        return self.parts.tcrm

    @property
    def absolute_signal(self) -> bool:
        """ADAE: the k*Q term that survives a zero-std group."""
        return self.parts.adae

    @property
    def eval_guidance(self) -> float:
        """The CFG scale of held-out evaluation and of the benchmark's quality images."""
        return self.eval_guidance_scale or self.guidance_scale

    @property
    def drops_zero_std(self) -> bool:
        return self.parts.drop_zero_std

    @property
    def trained_steps(self) -> int:
        """The first floor(f*T) steps, within the SDE window (an ODE step has no log-prob to train)."""
        first = int(self.timestep_fraction * self.num_steps)
        return min(first, self.sde_steps) if self.sde_steps else first

    @property
    def noise_levels(self) -> list[float]:
        """The rollouts' noise level of every step (all 0 for sampler ode)."""
        if self.parts.sampler == "ode":
            return [0.0] * self.num_steps
        window = self.sde_steps or self.num_steps
        return [self.noise_level if i < window else 0.0 for i in range(self.num_steps)]

    def reward_spec(self, world_reward: str) -> Any:
        return self.reward or world_reward
