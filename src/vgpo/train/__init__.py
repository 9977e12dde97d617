"""RL training: an algorithm is a sampler + an advantage + an objective (algorithms.py), in one trainer."""

from vgpo.train.config import TrainConfig
from vgpo.train.trainer import TrainHooks, train

__all__ = ["TrainConfig", "TrainHooks", "train"]
