"""The flow-matching objectives' per-sample losses against their papers' formulas, computed by hand."""

import math

import pytest
import torch

from vgpo.train.fm_losses import (
    advantage_at_time,
    awm_log_likelihood,
    awm_loss,
    fm_interpolate,
    fm_target,
    nft_loss,
    optimality_probability,
    velocity_kl,
)


def test_forward_process_and_target_by_hand():
    x0, noise = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])
    # 0.75*[1, -2] + 0.25*[3, 0.5] = [1.5, -1.375]; target = noise - x0 = [2, 2.5]
    assert torch.equal(fm_interpolate(x0, noise, torch.tensor([0.25])), torch.tensor([[1.5, -1.375]]))
    assert torch.equal(fm_target(x0, noise), torch.tensor([[2.0, 2.5]]))
    xt = fm_interpolate(x0.bfloat16(), noise.bfloat16(), torch.tensor([0.25]))
    assert xt.dtype == torch.bfloat16 and fm_target(x0.bfloat16(), noise.bfloat16()).dtype == torch.float32
    # per-sample t over a batch of images
    x0, noise = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    xt = fm_interpolate(x0, noise, torch.tensor([0.1, 0.9]))
    assert torch.allclose(xt[0], torch.full((3, 2, 2), 0.1)) and torch.allclose(xt[1], torch.full((3, 2, 2), 0.9))


def test_optimality_probability_by_hand():
    adv = torch.tensor([-7.0, -2.5, 0.0, 1.0, 5.0, 9.0])
    torch.testing.assert_close(optimality_probability(adv, 5.0), torch.tensor([0.0, 0.25, 0.5, 0.6, 1.0, 1.0]))
    with pytest.raises(ValueError, match="clip"):
        optimality_probability(adv, 0.0)


def test_velocity_kl_by_hand():
    # ((1-0)^2 + (3-3)^2)/2 = 0.5 ; ((0-2)^2 + (0-0)^2)/2 = 2
    v, anchor = torch.tensor([[1.0, 3.0], [0.0, 0.0]]), torch.tensor([[0.0, 3.0], [2.0, 0.0]])
    torch.testing.assert_close(velocity_kl(v, anchor), torch.tensor([0.5, 2.0]))


# One sample, two pixels: v_theta = [1, 0], v_old = [0.5, 1], target = 0, beta = 0.25, r = 0.75.
#   v+ = 0.75*v_old + 0.25*v_theta = [0.625, 0.75]     v- = 1.25*v_old - 0.25*v_theta = [0.375, 1.25]
def _nft_inputs():
    v = torch.tensor([[1.0, 0.0]], requires_grad=True)
    return v, torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0.75])


def test_nft_loss_plain_by_hand():
    # L+ = (0.625^2 + 0.75^2)/2 = 0.4765625, L- = (0.375^2 + 1.25^2)/2 = 0.8515625
    # loss = (0.75*0.4765625 + 0.25*0.8515625)/0.25 = 2.28125
    v, v_old, target, r = _nft_inputs()
    loss = nft_loss(v, v_old, target, r, 0.25, weighting="none")
    torch.testing.assert_close(loss, torch.tensor([2.28125]))
    # d/dv_theta = [2 r e+ - 2 (1-r) e-]/N (the 1/beta cancels dv+-/dv_theta = +-beta):
    # pixel 0: (0.9375 - 0.1875)/2 = 0.375; pixel 1: (1.125 - 0.625)/2 = 0.25
    loss.sum().backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.375, 0.25]]))


def test_nft_loss_adaptive_by_hand():
    # t = 0.5: x0 errors t*e+ = [0.3125, 0.375] (mean sq 0.119140625, mean abs 0.34375 -> L+ = 0.34659091),
    #          t*e- = [0.1875, 0.625] (mean sq 0.212890625, mean abs 0.40625 -> L- = 0.52403846)
    # loss = (0.75*0.34659091 + 0.25*0.52403846)/0.25 = 1.56381119
    v, v_old, target, r = _nft_inputs()
    loss = nft_loss(v, v_old, target, r, 0.25, t=torch.tensor([0.5]))
    torch.testing.assert_close(loss, torch.tensor([1.56381119]))
    # the normalisers are constants: d/dv_theta = [r*2 t^2 e+ / s+ - (1-r)*2 t^2 e- / s-]/N
    # pixel 0: (0.75*0.3125/0.34375 - 0.25*0.1875/0.40625)/2 = (0.68181818 - 0.11538462)/2 = 0.28321678
    # pixel 1: (0.75*0.375/0.34375 - 0.25*0.625/0.40625)/2 = (0.81818182 - 0.38461538)/2 = 0.21678322
    loss.sum().backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.28321678, 0.21678322]]))


def test_nft_loss_refuses_bad_arguments():
    v, v_old, target, r = _nft_inputs()
    with pytest.raises(ValueError, match="needs the training times"):
        nft_loss(v, v_old, target, r, 0.5)
    with pytest.raises(ValueError, match="beta"):
        nft_loss(v, v_old, target, r, 0.0, weighting="none")
    with pytest.raises(ValueError, match="weighting"):
        nft_loss(v, v_old, target, r, 0.5, weighting="x0")


def test_awm_log_likelihood_by_hand():
    # l = ((1-0)^2 + (3-1)^2)/2 = 2.5 at t = 0.5
    v, target, t = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0.5])
    torch.testing.assert_close(awm_log_likelihood(v, target), torch.tensor([-2.5]))
    torch.testing.assert_close(awm_log_likelihood(v, target, t, weighting="t"), torch.tensor([-1.25]))
    torch.testing.assert_close(awm_log_likelihood(v, target, t, weighting="t2"), torch.tensor([-0.625]))
    # ghuber p = 0.25: -0.5*((2.5 + 1e-10)^0.25 - (1e-10)^0.25)/0.25 = -2*(1.25743343 - 0.00316228) = -2.50854230
    torch.testing.assert_close(awm_log_likelihood(v, target, t, weighting="ghuber"), torch.tensor([-2.50854230]))
    with pytest.raises(ValueError, match="needs the training times"):
        awm_log_likelihood(v, target, weighting="t")


def test_awm_loss_clipped_ratio_by_hand():
    # lp = -2.5, old lp = -2: ratio = exp(-0.5) = 0.60653066, outside [0.8, 1.2].
    v, target = torch.tensor([[1.0, 3.0]], requires_grad=True), torch.tensor([[0.0, 1.0]])
    old = torch.tensor([-2.0])
    # A = 1.5: max(-1.5*0.60653066, -1.5*0.8) = -0.90979599 (unclipped term: gradient flows)
    loss, stats = awm_loss(v, target, torch.tensor([1.5]), old_log_lik=old, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor([-0.90979599]))
    torch.testing.assert_close(stats["ratio"], torch.tensor([0.60653066]))
    assert stats["clipped"].tolist() == [1.0]
    loss.sum().backward()
    # d/dv of -A*exp(lp - old) = -A*ratio*dlp/dv = A*ratio*(v - target)*2/N = 1.5*0.60653066*[1, 2]
    torch.testing.assert_close(v.grad, torch.tensor([[0.90979599, 1.81959198]]))
    # A = -1.5: max(0.90979599, 1.2) = 1.2, the clipped constant: no gradient
    v.grad = None
    loss, _ = awm_loss(v, target, torch.tensor([-1.5]), old_log_lik=old, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor([1.2]))
    loss.sum().backward()
    assert torch.equal(v.grad, torch.zeros(1, 2))


def test_awm_loss_on_policy_is_advantage_weighted_matching_with_clip_and_kl_by_hand():
    # adv 10 clipped at 5 and divided by 5 -> A = 1; on-policy ratio 1 -> policy term -1;
    # velocity penalty to v_old = [0, 3]: ((1-0)^2 + 0)/2 = 0.5, times 0.1 -> loss = -1 + 0.05 = -0.95
    v, target = torch.tensor([[1.0, 3.0]], requires_grad=True), torch.tensor([[0.0, 1.0]])
    loss, stats = awm_loss(v, target, torch.tensor([10.0]), adv_clip=5.0, v_old=torch.tensor([[0.0, 3.0]]), kl_beta=0.1)
    torch.testing.assert_close(loss, torch.tensor([-0.95]))
    torch.testing.assert_close(stats["kl"], torch.tensor([0.5]))
    torch.testing.assert_close(stats["mse"], torch.tensor([2.5]))
    loss.sum().backward()
    # A*(v - target)*2/N + 0.1*(v - v_old)*2/N = [1, 2] + [0.1, 0]
    torch.testing.assert_close(v.grad, torch.tensor([[1.1, 2.0]]))
    with pytest.raises(ValueError, match="needs v_old"):
        awm_loss(v, target, torch.tensor([1.0]), kl_beta=0.1)


class _TinyPolicy(torch.nn.Module):
    """A linear velocity model on 2 x 4 inputs, so gradients reach parameters like a network's."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def _losses(kind, model, x, v_old, target, adv, t):
    v = model(x)
    if kind == "nft_adaptive":
        return nft_loss(v, v_old, target, optimality_probability(adv, 2.0), 0.7, t=t)
    if kind == "nft_plain":
        return nft_loss(v, v_old, target, optimality_probability(adv, 2.0), 0.7, weighting="none")
    if kind == "awm":
        old = awm_log_likelihood(v_old, target, t, weighting="ghuber")
        return awm_loss(
            v,
            target,
            adv,
            t=t,
            old_log_lik=old,
            clip_range=0.5,
            adv_clip=2.0,
            v_old=v_old,
            kl_beta=0.3,
            weighting="ghuber",
        )[0]
    return awm_loss(v, target, adv)[0]


@pytest.mark.parametrize("kind", ["nft_adaptive", "nft_plain", "awm", "awm_plain"])
def test_batch_of_8_equals_2_micro_batches_of_4_accumulated(kind):
    g = torch.Generator().manual_seed(0)
    x, v_old, target = (torch.randn(8, 2, 4, generator=g) for _ in range(3))
    adv, t = torch.randn(8, generator=g) * 2, torch.rand(8, generator=g)
    torch.manual_seed(0)
    model = _TinyPolicy()
    full = _losses(kind, model, x, v_old, target, adv, t)
    (full.sum() / 8).backward()
    grads_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    parts = []
    for mb in (slice(0, 4), slice(4, 8)):
        part = _losses(kind, model, x[mb], v_old[mb], target[mb], adv[mb], t[mb])
        (part.sum() / 8).backward()
        parts.append(part.detach())
    torch.testing.assert_close(torch.cat(parts), full.detach())
    for p, g_full in zip(model.parameters(), grads_full):
        torch.testing.assert_close(p.grad, g_full)
    assert any(g.abs().sum() > 0 for g in grads_full)


def _grad_at_old_policy(kind, signal, t=None):
    g = torch.Generator().manual_seed(1)
    v_old, target = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    v = v_old.clone().requires_grad_(True)
    if kind.startswith("nft"):
        weighting = "none" if kind == "nft_plain" else "adaptive"
        loss = nft_loss(v, v_old, target, signal, 0.3, t=t, weighting=weighting)
    else:
        old = awm_log_likelihood(v_old, target, t, weighting="ghuber" if t is not None else "uniform")
        loss, _ = awm_loss(
            v,
            target,
            signal,
            t=t,
            old_log_lik=old,
            clip_range=0.2,
            v_old=v_old,
            kl_beta=0.5,
            weighting="ghuber" if t is not None else "uniform",
        )
    loss.sum().backward()
    return v.grad, v_old - target


@pytest.mark.parametrize("kind", ["nft_adaptive", "nft_plain", "awm", "awm_ghuber"])
def test_neutral_samples_give_no_gradient_at_the_old_policy(kind):
    t = torch.tensor([0.2, 0.5, 0.9])
    neutral = torch.full((3,), 0.5) if kind.startswith("nft") else torch.zeros(3)
    grad, _ = _grad_at_old_policy(kind, neutral, t if kind != "awm" else None)
    # zero in exact arithmetic; NFT's v+ and v- round v_old at ~1e-8 in float32 (a real gradient is ~0.1)
    assert grad.abs().max() < 1e-6
    signal, _ = _grad_at_old_policy(kind, neutral + 0.2, t if kind != "awm" else None)
    assert signal.abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["nft_adaptive", "nft_plain", "awm", "awm_ghuber"])
def test_gradient_at_the_old_policy_has_the_formulas_sign(kind):
    # NFT: gradient proportional to (2r - 1)*(v_old - target); AWM: A*(v - target) times a positive weight.
    # So a positive signal pulls v_theta towards the target, a negative one pushes it away, per sample.
    t = torch.tensor([0.2, 0.5, 0.9])
    t_arg = t if kind != "awm" else None
    good = torch.tensor([0.9, 0.6, 1.0]) if kind.startswith("nft") else torch.tensor([1.0, 0.3, 2.0])
    bad = torch.tensor([0.1, 0.4, 0.0]) if kind.startswith("nft") else torch.tensor([-1.0, -0.3, -2.0])
    for signal, sign in ((good, 1.0), (bad, -1.0)):
        grad, err = _grad_at_old_policy(kind, signal, t_arg)
        for i in range(3):
            cos = torch.nn.functional.cosine_similarity(grad[i].flatten(), err[i].flatten(), dim=0)
            assert abs(cos.item() - sign) < 1e-5, (kind, i, cos.item())
        step = err - 0.01 * grad  # v - target after a small descent step from v = v_old
        moved = (step**2).flatten(1).sum(1) - (err**2).flatten(1).sum(1)
        assert ((moved < 0) if sign > 0 else (moved > 0)).all()


def test_advantage_at_time_by_hand():
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])  # 4 steps starting at 1, 0.8, 0.5, 0.2
    adv = torch.tensor([[1.0, 2.0, 4.0, 8.0]]).expand(6, 4)
    t = torch.tensor([0.9, 0.65, 0.35, 1.0, 0.2, 0.1])
    # 0.9: halfway from 1 (1) to 0.8 (2) -> 1.5; 0.65: halfway 0.8 (2) -> 0.5 (4) -> 3; 0.35: halfway 0.5 (4)
    # -> 0.2 (8) -> 6; 1.0 -> 1; 0.2 -> 8; 0.1 is below the last step's start -> clamps to 8
    torch.testing.assert_close(advantage_at_time(adv, sigmas, t), torch.tensor([1.5, 3.0, 6.0, 1.0, 8.0, 8.0]))
    # nearest start sigma: 0.9 is 0.1 from both 1 and 0.8 in exact arithmetic, so check off-tie points
    t = torch.tensor([0.95, 0.66, 0.6, 0.3, 0.05, 1.3])
    torch.testing.assert_close(
        advantage_at_time(adv, sigmas, t, mode="nearest"), torch.tensor([1.0, 2.0, 4.0, 8.0, 8.0, 1.0])
    )
    # an exact tie (binary fractions) goes to the earlier, noisier step
    sig = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert advantage_at_time(adv[:1], sig, torch.tensor([0.625]), mode="nearest").item() == 2.0


def test_advantage_at_time_per_sample_rows_and_constant_advantage():
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    adv = torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, -4.0, 4.0, 0.0]])
    t = torch.tensor([0.4, 0.625])
    # row 0 constant -> 3; row 1 at 0.625: halfway between 0.75 (-4) and 0.5 (4) -> 0
    torch.testing.assert_close(advantage_at_time(adv, sigmas, t), torch.tensor([3.0, 0.0]))
    for mode in ("linear", "nearest"):
        got = advantage_at_time(adv[:1].expand(50, 4), sigmas, torch.linspace(-0.2, 1.2, 50), mode=mode)
        assert torch.equal(got, torch.full((50,), 3.0))
    # one step: its advantage everywhere
    assert advantage_at_time(torch.tensor([[2.5]]), sigmas[:2], torch.tensor([0.1])).item() == 2.5
    with pytest.raises(ValueError, match="mode"):
        advantage_at_time(adv, sigmas, t, mode="cubic")
    with pytest.raises(ValueError, match="sigmas"):
        advantage_at_time(adv, sigmas[:3], t)


def test_losses_are_float32_for_low_precision_inputs():
    v, v_old, target = (torch.randn(2, 4).bfloat16() for _ in range(3))
    t = torch.tensor([0.3, 0.7])
    assert nft_loss(v, v_old, target, torch.tensor([0.2, 0.8]), 1.0, t=t).dtype == torch.float32
    assert awm_loss(v, target, torch.tensor([1.0, -1.0]), t=t, weighting="ghuber")[0].dtype == torch.float32
    assert advantage_at_time(torch.ones(2, 3).bfloat16(), torch.tensor([1.0, 0.5, 0.2, 0.0]), t).dtype == torch.float32
    assert math.isfinite(awm_log_likelihood(v_old, v_old, t, weighting="ghuber").sum().item())
