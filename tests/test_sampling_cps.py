"""Coefficients-preserving sampling (CPS, Wang & Yu 2025) as Flow-GRPO's ``sde_type="cps"`` computes it."""

import math

import pytest
import torch

from vgpo.sampling import flow_schedule, ode_step, sde_step
from vgpo.sampling.step import sde_std
from vgpo.train.losses import gaussian_kl


def _cps_oracle(x, v, s, s_next, a, prev):
    """The CPS step element by element in plain Python floats (x, v, prev: lists of rows)."""
    std = s_next * math.sin(a * math.pi / 2)
    c = math.sqrt(max(s_next**2 - std**2, 0.0))
    means, log_probs = [], []
    for xr, vr, pr in zip(x, v, prev):
        mr = [(xi - s * vi) * (1 - s_next) + (xi + (1 - s) * vi) * c for xi, vi in zip(xr, vr)]
        means.append(mr)
        log_probs.append(-sum((pi - mi) ** 2 for pi, mi in zip(pr, mr)) / len(mr))
    return means, log_probs, std


def test_cps_step_by_hand_numbers():
    # s = 1, s' = 0.6, a = 0.5: std = 0.6*sin(pi/4) = 0.4242641, sqrt(0.36 - 0.18) = 0.4242641;
    # x0_hat = x - v = [-1.5, -1.25], x1_hat = x = [0.5, -1.0];
    # mean = 0.4*x0_hat + 0.4242641*x1_hat = [-0.3878680, -0.9242641];
    # log_prob = -((0 + 0.3878680)^2 + (-1 + 0.9242641)^2)/2 = -(0.1504416 + 0.0057359)/2 = -0.0780888.
    sigmas = torch.tensor([1.0, 0.6, 0.0])
    x, v, prev = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.25]]), torch.tensor([[0.0, -1.0]])
    out = sde_step(x, v, sigmas, 0, 0.5, prev_sample=prev, sde_type="cps")
    torch.testing.assert_close(out.mean, torch.tensor([[-0.3878680, -0.9242641]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.log_prob, torch.tensor([-0.0780888]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.std, torch.tensor(0.4242641), rtol=0, atol=1e-6)
    assert torch.equal(out.prev_sample, prev)


@pytest.mark.parametrize("a", [0.3, 0.8, 1.0])
def test_cps_step_matches_the_formula_on_every_step_including_the_last(a):
    sigmas = flow_schedule(6, 3.0)
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        x, v, prev = (torch.randn(3, 4, generator=g) for _ in range(3))
        out = sde_step(x, v, sigmas, i, a, prev_sample=prev, sde_type="cps")
        mean, log_prob, std = _cps_oracle(
            x.tolist(), v.tolist(), float(sigmas[i]), float(sigmas[i + 1]), a, prev.tolist()
        )
        torch.testing.assert_close(out.mean, torch.tensor(mean), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.log_prob, torch.tensor(log_prob), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.std, torch.tensor(std), rtol=1e-6, atol=1e-7)
        assert torch.isfinite(out.log_prob).all()
    # The last step (s' = 0): no noise, the mean is the x0 projection x - s*v, the log-prob finite.
    assert float(out.std) == 0.0
    torch.testing.assert_close(out.mean, x - sigmas[5] * v)


def test_cps_sampled_step_adds_noise_of_std_and_last_step_is_its_mean():
    sigmas = flow_schedule(10, 3.0)
    x, v = torch.zeros(20_000, 4), torch.zeros(20_000, 4)
    out = sde_step(x, v, sigmas, 3, 0.8, generator=torch.Generator().manual_seed(0), sde_type="cps")
    expected = float(sigmas[4]) * math.sin(0.8 * math.pi / 2)
    assert abs((out.prev_sample - out.mean).std().item() - expected) < 0.01 * expected
    last = sde_step(
        torch.randn(5, 4), torch.randn(5, 4), sigmas, 9, 0.8, generator=torch.Generator().manual_seed(1), sde_type="cps"
    )
    assert torch.equal(last.prev_sample, last.mean) and torch.equal(last.log_prob, torch.zeros(5))


def test_cps_same_generator_gives_same_sample_and_gradient_flows_through_mean_only():
    sigmas = flow_schedule(10, 3.0)
    x = torch.randn(2, 3, 4, 4)
    v = torch.randn(2, 3, 4, 4, requires_grad=True)
    a = sde_step(x, v, sigmas, 2, 0.8, generator=torch.Generator().manual_seed(3), sde_type="cps")
    b = sde_step(x, v, sigmas, 2, 0.8, generator=torch.Generator().manual_seed(3), sde_type="cps")
    assert torch.equal(a.prev_sample, b.prev_sample)
    prev = a.prev_sample.detach().requires_grad_(True)
    out = sde_step(x, v, sigmas, 2, 0.8, prev_sample=prev, sde_type="cps")
    torch.testing.assert_close(out.log_prob, a.log_prob)
    out.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0 and prev.grad is None


def test_cps_noise_level_zero_is_exactly_euler():
    sigmas = flow_schedule(10, 3.0)
    x, v = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    for i in range(10):
        out = sde_step(x, v, sigmas, i, 0.0, sde_type="cps")
        assert torch.equal(out.prev_sample, ode_step(x, v, sigmas, i))
        assert torch.equal(out.log_prob, torch.zeros(3)) and float(out.std) == 0.0
    # A small noise level is close to Euler (the coefficients are continuous in a).
    out = sde_step(x, v, sigmas, 4, 1e-4, prev_sample=ode_step(x, v, sigmas, 4), sde_type="cps")
    torch.testing.assert_close(out.mean, ode_step(x, v, sigmas, 4), rtol=0, atol=1e-5)


def test_cps_maths_is_float32_for_low_precision_inputs():
    sigmas = flow_schedule(10, 3.0)
    x, v = torch.randn(2, 4).bfloat16(), torch.randn(2, 4).bfloat16()
    out = sde_step(x, v, sigmas, 1, 0.8, sde_type="cps")
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == torch.float32 and out.mean.dtype == torch.float32
    torch.testing.assert_close(out.mean, sde_step(x.float(), v.float(), sigmas, 1, 0.8, sde_type="cps").mean)


def test_unknown_sde_type_and_cps_noise_level_above_one_are_refused():
    sigmas = flow_schedule(4, 1.0)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="sde_type"):
        sde_step(x, x, sigmas, 0, 0.7, sde_type="ddim")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sde_step(x, x, sigmas, 0, 1.2, sde_type="cps")


def _flow_grpo_sde_as_before(x, v, sigmas, i, a, prev):
    """The default step's maths in the exact operation order it had before sde_type existed."""
    s = sigmas[i].float()
    dt = sigmas[i + 1].float() - sigmas[i].float()
    std = a * torch.sqrt(s / (1.0 - torch.where(s == 1.0, sigmas[1].float(), s)))
    mean = x * (1 + std**2 * dt / (2 * s)) + v * (1 + std**2 * (1 - s) / (2 * s)) * dt
    scale = std * torch.sqrt(-dt)
    log_prob = -((prev - mean) ** 2) / (2 * scale**2) - torch.log(scale) - 0.5 * math.log(2.0 * math.pi)
    return mean, log_prob.mean(dim=tuple(range(1, x.ndim))), std


@pytest.mark.parametrize("i", [0, 4, 9])
def test_default_sde_type_is_bit_identical_to_the_flow_grpo_sde_step(i):
    sigmas = flow_schedule(10, 3.0)
    g = torch.Generator().manual_seed(i)
    x, v = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    default = sde_step(x, v, sigmas, i, 0.7, generator=torch.Generator().manual_seed(9))
    named = sde_step(x, v, sigmas, i, 0.7, generator=torch.Generator().manual_seed(9), sde_type="sde")
    mean, log_prob, std = _flow_grpo_sde_as_before(x, v, sigmas, i, 0.7, default.prev_sample)
    for out in (default, named):
        assert torch.equal(out.mean, mean) and torch.equal(out.log_prob, log_prob) and torch.equal(out.std, std)
    assert torch.equal(default.prev_sample, named.prev_sample)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    assert torch.equal(default.prev_sample, mean + std * torch.sqrt(sigmas[i] - sigmas[i + 1]) * eps)
    assert torch.equal(sde_std(sigmas, i, 0.7), std)


def _gaussian_velocity(mu, s0):
    """Exact velocity E[eps - x0 | x_t = x] of the rectified flow from N(0, 1) to 1-D data N(mu, s0^2)."""

    def velocity(x, t):
        var = (1 - t) ** 2 * s0**2 + t**2
        return (-mu + (t - (1 - t) * s0**2) * (x.double() - (1 - t) * mu) / var).float()

    return velocity


@pytest.mark.parametrize("a", [0.5, 0.8, 1.0])
def test_cps_reproduces_the_marginals_when_the_x0_prediction_is_exact(a):
    # Point-mass data x0 = mu: the exact velocity's x0_hat is mu and x1_hat the very noise of x_s, so CPS
    # keeps x_s = (1-s)*mu + s*z with z ~ N(0, 1) at every step, for every a: the property its name says.
    # 20k particles: Monte-Carlo error of a std of size s is s/sqrt(2*20k) = 0.005*s; tolerance 0.03*s.
    mu, n = 1.5, 20_000
    velocity = _gaussian_velocity(mu, 0.0)
    sigmas = flow_schedule(10, 3.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    for i in range(10):
        x = sde_step(x, velocity(x, float(sigmas[i])), sigmas, i, a, generator=g, sde_type="cps").prev_sample
        s = float(sigmas[i + 1])
        assert abs(x.mean().item() - (1 - s) * mu) < 0.03 * max(s, 1e-3), (i, x.mean().item())
        assert abs(x.std().item() - s) < 0.03 * max(s, 1e-3), (i, x.std().item(), s)
    assert torch.allclose(x, torch.full_like(x, mu), atol=1e-5)  # the last step lands on the data


@pytest.mark.parametrize("a", [0.0, 0.8, 1.0])
def test_cps_moments_on_gaussian_data_follow_the_step_in_closed_form(a):
    # Data N(mu, s0^2): the exact velocity is linear, v = -mu + k_s*(x - m_s) with m_s = (1-s)*mu and
    # k_s = (s - (1-s)*s0^2)/var_s, so a CPS step maps the deviation d = x - m_s to
    #   (1-s')*(1 - s*k_s)*d + sqrt(s'^2 - std^2)*(1 + (1-s)*k_s)*d + std*eps:
    # the mean stays m_s exactly and the variance obeys V' = coef^2*V + std^2 (float64 below). Unlike
    # Flow-GRPO's SDE, CPS does not keep the data's variance when x0_hat is a posterior mean (its std
    # does not shrink with the step size): at a = 0.8 over these 100 steps the final std is about 0.40
    # for data std 0.5 (the ODE gets 0.497), which this recursion predicts.
    # 50k particles: Monte-Carlo error of the mean/std is < 0.005; tolerance 0.015.
    mu, s0, n, steps = 1.5, 0.5, 50_000, 100
    velocity = _gaussian_velocity(mu, s0)
    sigmas = flow_schedule(steps, 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    var = 1.0
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = sde_step(x, velocity(x, s), sigmas, i, a, generator=g, sde_type="cps").prev_sample
        k = (s - (1 - s) * s0**2) / ((1 - s) ** 2 * s0**2 + s**2)
        std = s_next * math.sin(a * math.pi / 2)
        coef = (1 - s_next) * (1 - s * k) + math.sqrt(max(s_next**2 - std**2, 0.0)) * (1 + (1 - s) * k)
        var = coef**2 * var + std**2
        if (i + 1) % 25 == 0:
            assert abs(x.mean().item() - (1 - s_next) * mu) < 0.015, (i, x.mean().item())
            assert abs(x.std().item() - math.sqrt(var)) < 0.015, (i, x.std().item(), math.sqrt(var))
    if a == 0.0:
        assert abs(x.std().item() - s0) < 0.015  # the Euler ODE keeps the data's spread
    else:
        assert x.std().item() < s0 - 0.05  # CPS narrows it (see above): the check can tell the two apart


def test_cps_kl_is_flow_grpo_s_and_finite_on_every_trainable_step():
    # Flow-GRPO computes the KL of its CPS runs with the SDE's expression and CPS's std:
    # mean_pixels (mean - ref_mean)^2 / (2 std^2). CPS's std is the whole transition std, so this is the
    # exact per-element KL of the two step Gaussians. It is finite on every step but the last (s' = 0,
    # std = 0), which is never trained; there gaussian_kl refuses rather than return inf or nan.
    sigmas = flow_schedule(10, 3.0)
    g = torch.Generator().manual_seed(0)
    x, v, v_ref = (torch.randn(2, 8, generator=g) for _ in range(3))
    for i in range(9):
        out = sde_step(x, v, sigmas, i, 0.8, generator=g, sde_type="cps")
        ref = sde_step(x, v_ref, sigmas, i, 0.8, prev_sample=out.prev_sample, sde_type="cps")
        kl = gaussian_kl(out.mean, ref.mean, out.std)
        assert torch.isfinite(kl).all() and (kl > 0).all()
        expected = ((out.mean - ref.mean) ** 2).mean(dim=1) / (2 * out.std**2)
        torch.testing.assert_close(kl, expected)
        exact = torch.distributions.kl_divergence(
            torch.distributions.Normal(out.mean, out.std), torch.distributions.Normal(ref.mean, out.std)
        ).mean(dim=1)
        torch.testing.assert_close(kl, exact)
    last = sde_step(x, v, sigmas, 9, 0.8, generator=g, sde_type="cps")
    with pytest.raises(ValueError, match="std"):
        gaussian_kl(last.mean, last.mean, last.std)
