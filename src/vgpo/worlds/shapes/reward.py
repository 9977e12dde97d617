"""GenEval-style rewards for the shapes world, registered in ``vgpo.rewards`` (imported lazily).

``geneval-shapes`` and ``geneval-shapes-strict`` score GenEval's evaluation semantics (counts are
minimums), the same rules as the evaluation tables; ``geneval-shapes-server`` is the reward Flow-GRPO
trains on, its GenEval reward server's exact-count score (``score.server_terms``);
``geneval-shapes-exact`` is that server's binary ``strict_correct``: exact counts without partial credit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vgpo.rewards import Reward, register
from vgpo.worlds.shapes.score import score, server_score


class ShapesReward:
    """Detector-judged GenEval score of each image against its metadata; prompts are not read, the
    metadata carries the constraints."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        strict, partial = score(images, metadata)
        return strict if self.strict else partial


class ShapesServerReward:
    """Flow-GRPO's GenEval reward server's ``score`` on the shapes detector's objects: per include, an
    exact-count term ``1 - |count - n| / count`` (extra objects cost reward, unclipped, so it can go below
    0), then colour and position terms, which a wrong count replaces by a single 0; the reward is the
    mean of the terms, 1 only for a scene with exactly the asked objects, colours and relations. See
    ``vgpo.worlds.shapes.score.server_terms`` for every rule and how it differs from GenEval's evaluation
    (minimum counts), which the evaluation tables keep using."""

    def __init__(self, exact: bool = False) -> None:
        self.exact = exact

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        exact, value = server_score(images, metadata)
        return exact if self.exact else value


@register("geneval-shapes")
def partial_reward() -> Reward:
    """Fraction of GenEval's constraints met (counts as minimums, excludes included): a dense reward with
    the evaluation's semantics."""
    return ShapesReward(strict=False)


@register("geneval-shapes-strict")
def strict_reward() -> Reward:
    """1 when every constraint holds, else 0: GenEval's accuracy as a reward."""
    return ShapesReward(strict=True)


@register("geneval-shapes-server")
def server_reward() -> Reward:
    """Flow-GRPO's GenEval reward-server score: exact counts, per-object partial terms (``ShapesServerReward``)."""
    return ShapesServerReward()


@register("geneval-shapes-exact")
def exact_reward() -> Reward:
    """1 for a scene exactly as asked (every count exact, every colour and relation right), else 0: the
    reward server's ``strict_correct``. GenEval's strict score without its minimum-count loophole (an extra
    object gives 0) and the server score without its partial credit (a scene in the wrong colours gives 0)."""
    return ShapesServerReward(exact=True)
