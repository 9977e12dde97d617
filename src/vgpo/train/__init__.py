"""RL training: Flow-GRPO and VGPO (TCRM + ADAE) in one trainer."""

from vgpo.train.config import TrainConfig
from vgpo.train.trainer import train

__all__ = ["TrainConfig", "train"]
