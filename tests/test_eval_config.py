"""One evaluation config: ``vgpo eval``, the trainer and ``evaluate_world`` take their defaults from it."""

import dataclasses
import inspect

import pytest

from vgpo.cli import build_parser
from vgpo.errors import VgpoError
from vgpo.evaluate import EvalConfig, evaluate_world
from vgpo.train.config import TrainConfig


def test_eval_cli_defaults_are_eval_config():
    args = build_parser().parse_args(["eval"])
    ec = EvalConfig()
    assert (args.steps, args.cfg, args.images_per_prompt, args.seed, args.batch_size, args.limit) == (
        ec.num_steps,
        ec.guidance_scale,
        ec.images_per_prompt,
        ec.seed,
        ec.batch_size,
        ec.limit,
    )


def test_trainer_and_evaluate_world_defaults_are_eval_config():
    ec, tc = EvalConfig(), TrainConfig()
    assert (tc.eval_num_steps, tc.eval_images_per_prompt, tc.eval_batch_size, tc.eval_limit) == (
        ec.num_steps,
        ec.images_per_prompt,
        ec.batch_size,
        ec.limit,
    )
    params = inspect.signature(evaluate_world).parameters
    for f in dataclasses.fields(EvalConfig):
        if f.name in params:
            assert params[f.name].default == getattr(ec, f.name), f.name


@pytest.mark.parametrize(
    "field,value",
    [("num_steps", 0), ("images_per_prompt", 0), ("batch_size", 0), ("limit", -1), ("guidance_scale", 0.5)],
)
def test_eval_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(VgpoError, match=f"^{field}:"):
        EvalConfig(**{field: value})
