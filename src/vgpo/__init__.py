"""vgpo: RL alignment of flow-matching text-to-image models (Flow-GRPO and VGPO)."""

__version__ = "0.1.0"
