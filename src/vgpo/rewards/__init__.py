"""Reward protocol and registry.

Every reward is a callable ``reward(images, prompts, metadata) -> (B,) float32 tensor`` with images
(B, 3, H, W) float in [0, 1]. Configs name rewards by string; several can be weighted::

    r = vgpo.rewards.build("geneval-shapes")
    r = vgpo.rewards.build({"geneval-shapes": 1.0, "brightness": 0.1})
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from vgpo.errors import VgpoError


@runtime_checkable
class Reward(Protocol):
    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor: ...


_FACTORIES: dict[str, Callable[..., Reward]] = {}
# Rewards whose module is imported on first use (heavy dependencies stay optional).
_LAZY: dict[str, str] = {
    "geneval-shapes": "vgpo.worlds.shapes.reward",
    "geneval-shapes-strict": "vgpo.worlds.shapes.reward",
    "geneval-shapes-server": "vgpo.worlds.shapes.reward",
    "geneval-shapes-exact": "vgpo.worlds.shapes.reward",
    "ocr": "vgpo.rewards.ocr",
    "pickscore": "vgpo.rewards.hf",
    "clipscore": "vgpo.rewards.hf",
    "aesthetic": "vgpo.rewards.hf",
    "geneval-remote": "vgpo.rewards.geneval_client",
}


def register(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Decorator registering a reward factory under ``name``."""

    def deco(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        _FACTORIES[name] = factory
        return factory

    return deco


def available() -> list[str]:
    return sorted(set(_FACTORIES) | set(_LAZY))


def _factory(name: str) -> Callable[..., Reward]:
    if name not in _FACTORIES and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in _FACTORIES:
        raise VgpoError(f"unknown reward '{name}'; expected one of: {', '.join(available())}")
    return _FACTORIES[name]


class RewardValueError(VgpoError):
    """A reward returned something other than one finite number per image."""


def check_rewards(values: Any, count: int, name: str, where: str = "") -> torch.Tensor:
    """``values`` as a (count,) float32 CPU tensor; a wrong type or shape, or any NaN/inf, is a one-line
    error naming the reward, ``where`` (e.g. the epoch) and how many samples are bad."""
    prefix = f"reward {name}{', ' + where if where else ''}"
    if not isinstance(values, torch.Tensor):
        raise RewardValueError(f"{prefix}: returned {type(values).__name__}, expected a tensor of {count} values")
    if tuple(values.shape) != (count,):
        raise RewardValueError(
            f"{prefix}: returned shape {tuple(values.shape)}, expected ({count},): one value per image"
        )
    values = values.detach().float().cpu()
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise RewardValueError(f"{prefix}: {bad} of {count} samples are not finite (NaN or inf)")
    return values


class WeightedReward:
    """Sum of weighted rewards; ``last_components`` keeps each one's raw values for logging. Every term is
    checked (one finite value per image) before it is added."""

    def __init__(self, rewards: Mapping[str, Reward], weights: Mapping[str, float]):
        self.rewards = dict(rewards)
        self.weights = dict(weights)
        self.last_components: dict[str, torch.Tensor] = {}
        self.where = ""  # named in errors (the trainer sets the epoch)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        total = torch.zeros(images.shape[0], dtype=torch.float32)
        self.last_components = {}
        for name, reward in self.rewards.items():
            value = check_rewards(reward(images, prompts, metadata), images.shape[0], name, self.where)
            self.last_components[name] = value
            total = total + self.weights[name] * value
        return check_rewards(total, images.shape[0], "sum", self.where)


class CheckedReward:
    """A reward whose every output is checked (one finite value per image); errors name the reward and
    the epoch (``epoch``, set by the trainer; 0: the evaluation before training)."""

    def __init__(self, reward: Reward, name: str):
        self.reward = reward
        self.name = name
        self.epoch: int | None = 0

    @property
    def where(self) -> str:
        if self.epoch is None:
            return ""
        return "before training" if self.epoch == 0 else f"epoch {self.epoch}"

    @property
    def last_components(self) -> dict[str, torch.Tensor]:
        return getattr(self.reward, "last_components", {})

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        if isinstance(self.reward, WeightedReward):
            self.reward.where = self.where
        return check_rewards(self.reward(images, prompts, metadata), images.shape[0], self.name, self.where)


def checked(reward: Reward, spec: Any) -> CheckedReward:
    """``reward`` (built from ``spec``) with its outputs checked."""
    name = spec if isinstance(spec, str) else "+".join(map(str, spec))
    return CheckedReward(reward, name)


def _option_names(factory: Callable[..., Reward]) -> list[str]:
    """The keyword options a factory accepts (following ``**kwargs`` up a class's bases)."""
    names: set[str] = set()
    inits = [c.__init__ for c in factory.__mro__ if c is not object] if isinstance(factory, type) else [factory]
    for init in inits:
        if init is object.__init__:
            break
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(names)


def _construct(name: str, options: Mapping[str, Any], extra: Mapping[str, Any]) -> Reward:
    """``factory(**options, **extra)``; the TypeError of an unknown or missing option becomes a one-line
    VgpoError naming the reward and the option (any other TypeError propagates)."""
    factory = _factory(name)
    try:
        return factory(**options, **extra)
    except TypeError as err:
        given, message = {**options, **extra}, str(err)
        unknown = re.search(r"unexpected keyword argument '(\w+)'", message)
        option = unknown.group(1) if unknown else None
        if option is None and given and re.search(r"takes no( keyword)? arguments", message):
            option = min(given)
        if option in given:
            names = _option_names(factory)
            expected = f"one of: {', '.join(names)}" if names else "none"
            raise VgpoError(f"reward.{name}.{option}: unknown option; expected {expected}") from None
        missing = re.search(r"missing \d+ required (?:positional |keyword-only )?arguments?: '(\w+)'", message)
        if missing and missing.group(1) in _option_names(factory):
            raise VgpoError(f"reward.{name}.{missing.group(1)}: required option missing") from None
        raise


def build(spec: str | Mapping[str, Any], **kwargs: Any) -> Reward:
    """Build a reward from a name, or a ``{name: weight}`` / ``{name: {"weight": w, **options}}`` map.
    An option the reward does not take is a one-line ``VgpoError`` naming the reward and the option."""
    if isinstance(spec, str):
        return _construct(spec, {}, kwargs)
    if not isinstance(spec, Mapping) or not spec:
        raise VgpoError(f"reward: expected a name or a non-empty {{name: weight}} map, got {spec!r}")
    rewards, weights = {}, {}
    for name, value in spec.items():
        options = dict(value) if isinstance(value, Mapping) else {"weight": value}
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise VgpoError(f"reward.{name}.weight: expected a finite number, got {weight!r}")
        rewards[name] = _construct(name, options, kwargs)
        weights[name] = float(weight)
    return WeightedReward(rewards, weights)


@register("brightness")
class BrightnessReward:
    """Mean pixel value in [0, 1]: a trivial reward for invariant tests and smoke runs."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        return images.float().clamp(0, 1).mean(dim=(1, 2, 3)).cpu()
