"""Reward registry: ``build`` turns a factory's TypeError for an unknown or missing option into a
one-line VgpoError naming the reward and the option; other errors pass through."""

from __future__ import annotations

import pytest

import vgpo.rewards as rewards
from vgpo.errors import VgpoError


@pytest.fixture
def registered(monkeypatch):
    """Register throw-away test rewards (removed again after the test)."""

    def add(name, factory):
        monkeypatch.setitem(rewards._FACTORIES, name, factory)

    return add


def one_line_error(spec, **kwargs) -> str:
    with pytest.raises(VgpoError) as info:
        rewards.build(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_option_of_an_optionless_reward():
    assert one_line_error("brightness", scale=2).startswith("reward.brightness.scale: unknown option")
    assert one_line_error({"brightness": {"weight": 1.0, "gain": 2}}).startswith("reward.brightness.gain:")


def test_unknown_option_lists_the_known_ones(registered):
    class Scaled:
        def __init__(self, scale: float = 1.0, *, offset: float = 0.0):
            self.scale, self.offset = scale, offset

    registered("test-scaled", Scaled)
    assert one_line_error("test-scaled", scael=2) == (
        "reward.test-scaled.scael: unknown option; expected one of: offset, scale"
    )
    assert rewards.build("test-scaled", scale=2).scale == 2  # known options still work
    weighted = rewards.build({"test-scaled": {"weight": 0.5, "offset": 1.0}})
    assert weighted.rewards["test-scaled"].offset == 1.0 and weighted.weights["test-scaled"] == 0.5


def test_missing_required_option_and_function_factories(registered):
    def needs_path(path: str, batch_size: int = 8):
        return lambda images, prompts, metadata: images.mean(dim=(1, 2, 3))

    registered("test-needs-path", needs_path)
    assert one_line_error("test-needs-path") == "reward.test-needs-path.path: required option missing"
    assert one_line_error("test-needs-path", path="x", batchsize=2).startswith("reward.test-needs-path.batchsize:")


def test_options_forwarded_through_kwargs_to_a_base_class():
    # PickScoreReward(**kwargs) -> _ClipSimilarity.__init__: the TypeError comes from the base class,
    # before any model is loaded; the known options are collected up the class's bases.
    message = one_line_error("pickscore", devide_by=26)
    assert message.startswith("reward.pickscore.devide_by: unknown option; expected one of:")
    assert "divide_by" in message and "model_path" in message
    assert one_line_error({"geneval-remote": {"uri": "http://x"}}).startswith("reward.geneval-remote.uri:")


def test_other_type_errors_are_not_relabelled(registered):
    def broken(scale: float = 1.0):
        return len(scale)  # a bug inside the factory: TypeError, not the user's option

    registered("test-broken", broken)
    with pytest.raises(TypeError, match="len"):
        rewards.build("test-broken", scale=2.0)


def test_unknown_reward_name():
    with pytest.raises(VgpoError, match="unknown reward 'brightnes'"):
        rewards.build("brightnes")
