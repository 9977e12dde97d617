"""Checks that stop a run before a bad number reaches the weights (and so a checkpoint).

A non-finite loss or gradient norm means the step would write NaN or inf into the weights: the run
stops with a one-line error naming the epoch, before ``optimizer.step()``, so the last checkpoint on
disk stays the last good state. The gradient norm is the whole model's (all processes agree on it), so
every process stops at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from vgpo.errors import VgpoError


class NonFiniteError(VgpoError):
    """A loss, gradient or reward that is NaN or infinite."""


def check_update(epoch: int, grad_norm: float, losses: Mapping[str, float]) -> None:
    """Raise before an optimizer step whose gradient norm or accumulated losses are not finite.
    ``epoch`` counts from 0 (reported from 1, as in metrics.jsonl)."""
    check_step(f"epoch {epoch + 1}", grad_norm, losses)


def check_step(where: str, grad_norm: float, losses: Mapping[str, float]) -> None:
    bad = [f"{name} loss {value}" for name, value in losses.items() if not math.isfinite(value)]
    if not math.isfinite(grad_norm):
        bad.insert(0, f"gradient norm {grad_norm}")
    if bad:
        raise NonFiniteError(
            f"{where}: non-finite {', '.join(bad)}; stopped before the optimizer step "
            "(the last checkpoint is kept; check the reward, lr and config values)"
        )
