"""Advantages, values and weights computed by hand on small tensors."""

import pytest
import torch

from vgpo.train.advantages import (
    EPS,
    group_mean_std,
    grpo_advantages,
    interpolate_steps,
    reward_to_go,
    scored_steps,
    step_weights,
    vgpo_advantages,
    zero_std_groups,
)
from vgpo.train.losses import gaussian_kl, ppo_clip_loss


def test_grpo_advantages_by_hand_with_zero_std_group_and_negative_rewards():
    rewards = torch.tensor([1.0, 3.0, 0.5, 0.5, -2.0, -4.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = grpo_advantages(rewards, groups, num_steps=3)
    # G = 2: mean 2, population std 1 -> (-1, +1) / (1 + eps); a zero-std group -> 0.
    expected = torch.tensor([-1 / (1 + EPS), 1 / (1 + EPS), 0.0, 0.0, 1 / (1 + EPS), -1 / (1 + EPS)])
    assert adv.shape == (6, 3)
    for t in range(3):
        torch.testing.assert_close(adv[:, t], expected)
    assert zero_std_groups(rewards, groups).tolist() == [False, False, True, True, False, False]


def test_grpo_group_advantages_have_zero_mean():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(24, generator=g)
    groups = torch.arange(4).repeat_interleave(6)
    adv = grpo_advantages(rewards, groups, 1)[:, 0]
    for k in range(4):
        assert abs(adv[groups == k].sum().item()) < 1e-5


def test_global_std_uses_batch_std_and_group_mean():
    rewards = torch.tensor([0.0, 2.0, 10.0, 10.0])
    groups = torch.tensor([0, 0, 1, 1])
    adv = grpo_advantages(rewards, groups, 1, global_std=True)[:, 0]
    std = rewards.std(unbiased=False)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / (std + EPS))


def test_group_mean_std_per_step():
    values = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 0.0], [5.0, 4.0]])
    mean, std = group_mean_std(values, torch.tensor([7, 7, 3, 3]))
    torch.testing.assert_close(mean, torch.tensor([[2.0, 2.0], [2.0, 2.0], [5.0, 2.0], [5.0, 2.0]]))
    torch.testing.assert_close(std, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]]))


def test_reward_to_go_by_hand():
    r = torch.tensor([[1.0, 2.0, 4.0], [0.0, -1.0, 1.0]])
    q = reward_to_go(r, gamma=0.5)
    torch.testing.assert_close(
        q, torch.tensor([[1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0], [0 - 0.5 + 0.25, -1 + 0.5, 1.0]])
    )
    torch.testing.assert_close(reward_to_go(r, 1.0)[:, 0], r.sum(1))


def test_step_weights_and_guard():
    q = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0], [1.0, -2.0, -2.0]])
    w = step_weights(q)
    torch.testing.assert_close(w[0], torch.tensor([1.5, 1.0, 0.5]))
    torch.testing.assert_close(w[1], torch.ones(3))  # mean 0: guard
    torch.testing.assert_close(w[2], torch.ones(3))  # negative mean: guard
    torch.testing.assert_close(w[0].mean(), torch.tensor(1.0))


def test_vgpo_advantages_by_hand_including_zero_std_group():
    # Two groups of G = 2, T = 3 steps; group 1 has identical values (zero std).
    q = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]])
    groups = torch.tensor([0, 0, 1, 1])
    k = 0.5
    adv, omega = vgpo_advantages(q, groups, use_omega=True, adae_k=k, adae_steps=2)
    omega_expected = torch.tensor([[1.5, 1.0, 0.5], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(omega, omega_expected)
    # group 0, step 0: mean 2, std 1; step 1: mean 1.5, std 0.5; step 2: mean 1, std 0.
    norm = torch.tensor(
        [
            [1 / (1 + EPS), 0.5 / (0.5 + EPS), 0.0],
            [-1 / (1 + EPS), -0.5 / (0.5 + EPS), 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    kq = q * torch.tensor([k, k, 0.0])  # absolute term only on the first adae_steps = 2 steps
    torch.testing.assert_close(adv, omega_expected * (norm + kq))
    # The zero-std group keeps a signal k*Q on the first steps (ADAE's point) ...
    assert adv[2, 0] == pytest.approx(1.0) and adv[2, 2] == 0.0
    # ... that GRPO would not give it.
    assert grpo_advantages(q[:, -1], groups, 3)[2:].abs().max() == 0


def test_vgpo_without_omega_and_k_is_grpo():
    g = torch.Generator().manual_seed(1)
    r = torch.rand(8, generator=g) - 0.3
    groups = torch.arange(4).repeat_interleave(2)
    q = r[:, None].expand(8, 5)
    adv, omega = vgpo_advantages(q, groups, use_omega=False, adae_k=0.0, adae_steps=5)
    torch.testing.assert_close(adv, grpo_advantages(r, groups, 5))
    assert torch.equal(omega, torch.ones(8, 5))


def test_adae_only_is_grpo_plus_absolute_term():
    r = torch.tensor([0.2, 0.6, 0.4, 0.4])
    groups = torch.tensor([0, 0, 1, 1])
    adv, _ = vgpo_advantages(r[:, None].expand(4, 4), groups, use_omega=False, adae_k=2.0, adae_steps=4)
    torch.testing.assert_close(adv, grpo_advantages(r, groups, 4) + 2.0 * r[:, None])


def test_scored_steps_and_interpolation():
    assert scored_steps(10, 1) == list(range(10))
    assert scored_steps(10, 2) == [0, 2, 4, 6, 8, 9]
    assert scored_steps(10, 5) == [0, 5, 9]
    vals = torch.tensor([[0.0, 1.0, 3.0]])
    out = interpolate_steps(vals, [0, 5, 9], 10)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 2.5, 3.0]))
    full = torch.arange(10.0)[None]
    torch.testing.assert_close(interpolate_steps(full, list(range(10)), 10), full)


def test_ppo_clip_loss():
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    old = torch.zeros(4)
    loss, ratio = ppo_clip_loss(torch.zeros(4), old, adv, 0.1)
    torch.testing.assert_close(ratio, torch.ones(4))
    torch.testing.assert_close(loss, -adv)
    # ratio 2 for a positive advantage is clipped to 1.1; for a negative one the unclipped -A*r is larger.
    loss, _ = ppo_clip_loss(torch.log(torch.tensor([2.0, 2.0, 0.5, 0.5])), old, adv, 0.1)
    torch.testing.assert_close(loss, torch.tensor([-1.1, 2.0, -1.0, 2 * 0.9]))


def test_gaussian_kl_closed_form():
    mean, ref = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    ref[1] = 0
    kl = gaussian_kl(mean, ref, torch.tensor(0.5))
    torch.testing.assert_close(kl, torch.tensor([1 / (2 * 0.25), 0.0]))
