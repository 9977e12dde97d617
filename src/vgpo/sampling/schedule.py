"""The sigma schedule of diffusers' ``FlowMatchEulerDiscreteScheduler``, without diffusers."""

from __future__ import annotations

import numpy as np
import torch


def _shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    # Resolution-shift of SD3: s' = shift*s / (1 + (shift-1)*s).
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flow_schedule(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Return the ``num_steps + 1`` sigmas (descending, ending in 0) of
    ``FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift=shift).set_timesteps(num_steps)``.

    diffusers' quirk is reproduced on purpose: the training sigmas are shifted once in ``__init__``
    (so ``sigma_min`` is already shifted), then ``set_timesteps`` spaces timesteps linearly between
    ``sigma_max`` and that shifted ``sigma_min`` and shifts them again. The smallest non-zero sigma is
    therefore shifted twice (0.00893 for shift 3, not 0.00299). Computed in float64, returned float32.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float64)[::-1] / num_train_timesteps
    train = _shift(train, shift)
    sigma_max, sigma_min = train[0], train[-1]
    timesteps = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
    sigmas = _shift(timesteps / num_train_timesteps, shift)
    sigmas = np.concatenate([sigmas, [0.0]])
    return torch.from_numpy(sigmas.astype(np.float32))
