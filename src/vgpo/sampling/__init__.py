"""Flow-matching sampling maths: schedule, SDE/ODE steps, one-step projection, rollouts."""

from vgpo.sampling.rollout import Trajectory, guided_velocity, rollout
from vgpo.sampling.schedule import flow_schedule
from vgpo.sampling.step import SDEStepOutput, batch_randn, ode_step, predict_x0, sde_step

__all__ = [
    "flow_schedule",
    "SDEStepOutput",
    "sde_step",
    "batch_randn",
    "ode_step",
    "predict_x0",
    "Trajectory",
    "guided_velocity",
    "rollout",
]
