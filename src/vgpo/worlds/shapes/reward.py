"""GenEval-style rewards for the shapes world, registered in ``vgpo.rewards`` (imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vgpo.rewards import Reward, register
from vgpo.worlds.shapes.score import score


class ShapesReward:
    """Detector-judged GenEval score of each image against its metadata; prompts are not read, the
    metadata carries the constraints."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        strict, partial = score(images, metadata)
        return strict if self.strict else partial


@register("geneval-shapes")
def partial_reward() -> Reward:
    """Fraction of GenEval's constraint checks met (counts are minimums, so extra objects are not
    penalised); not Flow-GRPO's reward-server ``score``, which requires exact counts."""
    return ShapesReward(strict=False)


@register("geneval-shapes-strict")
def strict_reward() -> Reward:
    """1 when every constraint holds, else 0: GenEval's accuracy as a reward."""
    return ShapesReward(strict=True)
