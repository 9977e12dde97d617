"""Models behind one protocol (``FlowModel``); the trainer depends on nothing else."""

from vgpo.models.protocol import Condition, FlowModel, cat_conditions, index_condition

__all__ = ["Condition", "FlowModel", "cat_conditions", "index_condition"]
