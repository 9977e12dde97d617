"""The algorithm registry: an algorithm is a sampler + an advantage + an objective.

Three axes, each chosen by a config field, each implemented in one place:

  sampler    how rollouts are drawn (``sampling/step.py``): ``sde`` Flow-GRPO's SDE, ``cps`` the
             coefficients-preserving step, ``ode`` the Euler ODE (no log-probs); ``sde_steps`` limits
             the stochastic steps to a window.
  advantage  how rewards become per-(sample, step) advantages (``advantages.py``): group normalisation,
             plus TCRM's dense values and step weights (``tcrm``), plus ADAE's absolute term (``adae``).
  objective  how samples and advantages become a loss (``objectives.py``): ``ppo`` (Flow-GRPO),
             ``nft`` (DiffusionNFT), ``awm`` (Advantage Weighted Matching).

``algorithm`` names a preset of the three (the table ``PRESETS``); a part set explicitly in the config
(``sampler``, ``objective``, ``tcrm``, ``adae``, ``drop_zero_std_groups``) overrides the preset's and
leaves the rest as the preset says, so ``algorithm: vgpo`` + ``objective: nft`` is DiffusionNFT with
VGPO's advantages sampled by VGPO's SDE. This file is the only place that maps names to parts: the
trainer asks the resolved ``Parts``, never the name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vgpo.errors import VgpoError

if TYPE_CHECKING:
    from vgpo.train.config import TrainConfig

SAMPLERS = ("sde", "cps", "ode")
OBJECTIVES = ("ppo", "nft", "awm")


@dataclass(frozen=True)
class Parts:
    """One combination. ``drop_zero_std``: drop samples whose group rewards are all equal."""

    sampler: str
    objective: str
    tcrm: bool
    adae: bool
    drop_zero_std: bool


# The presets. grpo/vgpo/tcrm/adae are the four of the VGPO paper (arXiv 2512.12387) on Flow-GRPO's
# sampler and objective; nft and awm are DiffusionNFT (arXiv 2509.16117) and AWM (arXiv 2509.25050) with
# GRPO's group-normalised advantages on ODE rollouts, as both papers sample with a deterministic solver.
PRESETS: dict[str, Parts] = {
    "grpo": Parts("sde", "ppo", tcrm=False, adae=False, drop_zero_std=True),
    "vgpo": Parts("sde", "ppo", tcrm=True, adae=True, drop_zero_std=False),
    "tcrm": Parts("sde", "ppo", tcrm=True, adae=False, drop_zero_std=False),
    "adae": Parts("sde", "ppo", tcrm=False, adae=True, drop_zero_std=False),
    "nft": Parts("ode", "nft", tcrm=False, adae=False, drop_zero_std=False),
    "awm": Parts("ode", "awm", tcrm=False, adae=False, drop_zero_std=False),
}


def resolve(cfg: TrainConfig) -> Parts:
    """The preset of ``cfg.algorithm`` with the explicitly set parts of ``cfg`` over it."""
    parts = PRESETS[cfg.algorithm]
    explicit = {
        "sampler": cfg.sampler,
        "objective": cfg.objective,
        "tcrm": cfg.tcrm,
        "adae": cfg.adae,
        "drop_zero_std": cfg.drop_zero_std_groups,
    }
    return replace(parts, **{k: v for k, v in explicit.items() if v is not None})


def check(cfg: TrainConfig, parts: Parts) -> None:
    """Refuse, in one line each, the combinations that cannot work."""
    from vgpo.train.objectives import get_objective

    objective = get_objective(parts.objective)
    if parts.sampler == "ode":
        if objective.needs_log_probs:
            raise VgpoError(
                f"objective: {parts.objective} needs the step log-probs of stochastic rollouts; "
                "sampler ode has none (use sampler sde or cps, or objective nft or awm)"
            )
        if cfg.sde_steps:
            raise VgpoError(f"sde_steps: {cfg.sde_steps} with sampler ode, which has no SDE step")
        if cfg.shared_init_noise:
            raise VgpoError("shared_init_noise: with sampler ode a group's samples would all be the same image")
        return
    if cfg.noise_level <= 0:
        raise VgpoError(
            f"noise_level: expected > 0 for sampler {parts.sampler} (0 is sampler ode), got {cfg.noise_level}"
        )
    if parts.sampler == "cps" and cfg.noise_level > 1:
        raise VgpoError(
            f"noise_level: expected in (0, 1] for sampler cps (std = sigma'*sin(a*pi/2)), got {cfg.noise_level}"
        )
    if parts.sampler == "cps" and objective.needs_log_probs and cfg.trained_steps == cfg.num_steps:
        raise VgpoError(
            "timestep_fraction: sampler cps's last step is deterministic (std 0) and cannot be trained by "
            f"{parts.objective}; train fewer than num_steps={cfg.num_steps} steps (timestep_fraction or sde_steps)"
        )


def describe(parts: Parts) -> str:
    """A short name of the combination, e.g. ``sde+ppo+tcrm+adae``."""
    return "+".join([parts.sampler, parts.objective] + [n for n in ("tcrm", "adae") if getattr(parts, n)])
