"""The old policy of the flow-matching objectives: a lagged copy of the trained weights.

DiffusionNFT (arXiv 2509.16117) keeps an "old" copy of the trained weights: the rollouts are sampled
with it and its velocity anchors the implicit positive and negative policies; after each epoch's
update it moves towards the trained weights, old <- d*old + (1 - d)*current, with a decay
d = min(rate*(step - flat), max) (0 before ``flat``) that grows with the optimizer steps done, so the
first epochs are on-policy and later ones lag. AWM's ratio uses the same copy as its sampling policy.

The copy is a list of tensors like the parameters (each process keeps its shard under FSDP), swapped
into the model for no-grad forwards (``active``), as the evaluation EMA is. It is saved beside the
checkpoint's folder (``old_policy.safetensors``, with the optimizer-step count), in the same atomic
save as the weights, so that a resumed run is bit-identical whenever it was stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vgpo import distributed as dist
from vgpo.errors import VgpoError


def decay_at(step: int, rate: float, max_decay: float, flat: int) -> float:
    """DiffusionNFT's schedule: 0 before ``flat`` optimizer steps, then min(rate*(step - flat), max)."""
    return 0.0 if step < flat else min(rate * (step - flat), max_decay)


@contextmanager
def swapped_weights(params: list[torch.nn.Parameter], weights: list[torch.Tensor]) -> Iterator[None]:
    """Temporarily load ``weights`` into ``params``, restoring the trained values after."""
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)


class OldPolicy:
    """The lagged weights and the optimizer-step count that sets their decay."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.weights = [p.detach().clone() for p in params]
        self.optimizer_steps = 0

    def active(self) -> contextmanager:
        """The old weights in the model (no-grad forwards only: gradients would reach the trained tensors)."""
        return swapped_weights(self.params, self.weights)

    def step(self, optimizer_steps: int, rate: float, max_decay: float, flat: int) -> float:
        """After an epoch's update of ``optimizer_steps`` steps: old <- d*old + (1-d)*current; returns d."""
        self.optimizer_steps += optimizer_steps
        d = decay_at(self.optimizer_steps, rate, max_decay, flat)
        with torch.no_grad():
            for w, p in zip(self.weights, self.params):
                w.lerp_(p.detach(), 1.0 - d)
        return d

    def state(self) -> dict[str, torch.Tensor]:
        """The copy as whole tensors, with its optimizer-step count, for the checkpoint (a collective under
        FSDP: every process must call it)."""
        tensors = {f"old.{i}": dist.full_tensor(w).cpu() for i, w in enumerate(self.weights)}
        return {**tensors, "optimizer_steps": torch.tensor([self.optimizer_steps], dtype=torch.long)}

    def load_state(self, saved: dict[str, torch.Tensor], source: Path) -> None:
        """Restore what ``state`` returned (each process keeps its shard); ``source`` names the file in errors."""
        try:
            self.optimizer_steps = int(saved["optimizer_steps"].item())
            with torch.no_grad():
                for i, w in enumerate(self.weights):
                    w.copy_(dist.shard_like(saved[f"old.{i}"], w))
        except (KeyError, RuntimeError) as err:
            raise VgpoError(
                f"{source}: does not fit the model's trainable parameters ({str(err).splitlines()[0][:200]})"
            ) from None
