"""Analytic checks of the sampling maths (Flow-GRPO's formulas are the oracles)."""

import math

import pytest
import torch

from vgpo.sampling import flow_schedule, ode_step, predict_x0, rollout, sde_step
from vgpo.sampling.step import sde_std


def test_flow_schedule_matches_diffusers_shift3_10_steps():
    expected = [
        1.0,
        0.96012932,
        0.91334897,
        0.85769230,
        0.79036826,
        0.70727849,
        0.60215056,
        0.46487603,
        0.27804878,
        0.0089285718,
        0.0,
    ]
    sigmas = flow_schedule(10, 3.0)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (11,)
    torch.testing.assert_close(sigmas, torch.tensor(expected), rtol=0, atol=1e-7)


def test_flow_schedule_shift1_is_linear_between_sigma_max_and_sigma_min():
    sigmas = flow_schedule(4, 1.0)
    torch.testing.assert_close(sigmas[:-1], torch.linspace(1.0, 0.001, 4), rtol=0, atol=1e-7)
    assert sigmas[-1] == 0


def test_flow_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError):
        flow_schedule(0)
    with pytest.raises(ValueError):
        flow_schedule(10, shift=0)


def _flow_grpo_oracle(x, v, sigmas, i, a, prev):
    """Flow-GRPO's sde_step_with_logprob, written as published."""
    sigma, sigma_prev, sigma_max = sigmas[i], sigmas[i + 1], sigmas[1]
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * a
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    log_prob = (
        -((prev.detach() - mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
        - torch.log(std_dev_t * torch.sqrt(-1 * dt))
        - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi)))
    )
    return mean, log_prob.mean(dim=tuple(range(1, log_prob.ndim))), std_dev_t


@pytest.mark.parametrize("i", [0, 3, 8])
def test_sde_step_matches_flow_grpo_and_normal_log_prob(i):
    g = torch.Generator().manual_seed(i)
    sigmas = flow_schedule(10, 3.0)
    x, v = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    out = sde_step(x, v, sigmas, i, 0.7, generator=g)
    mean, log_prob, std = _flow_grpo_oracle(x, v, sigmas, i, 0.7, out.prev_sample)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.log_prob, log_prob)
    torch.testing.assert_close(out.std, std)
    scale = std * torch.sqrt(sigmas[i] - sigmas[i + 1])
    normal = torch.distributions.Normal(mean, scale).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, normal)


def test_sde_step_reuses_given_prev_sample_and_gradients_flow_through_mean_only():
    sigmas = flow_schedule(10, 3.0)
    x = torch.randn(2, 3, 4, 4)
    v = torch.randn(2, 3, 4, 4, requires_grad=True)
    prev = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = sde_step(x, v, sigmas, 2, 0.7, prev_sample=prev)
    assert torch.equal(out.prev_sample, prev)
    out.log_prob.sum().backward()
    assert v.grad is not None and prev.grad is None


def test_std_at_sigma_one_uses_next_sigma():
    sigmas = flow_schedule(10, 3.0)
    torch.testing.assert_close(sde_std(sigmas, 0, 0.7), 0.7 * torch.sqrt(1.0 / (1.0 - sigmas[1])))


def test_noise_level_zero_is_exactly_euler_with_zero_log_prob():
    sigmas = flow_schedule(10, 3.0)
    x, v = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    for i in range(10):
        out = sde_step(x, v, sigmas, i, 0.0)
        assert torch.equal(out.prev_sample, ode_step(x, v, sigmas, i))
        assert torch.equal(out.log_prob, torch.zeros(3)) and float(out.std) == 0.0


def test_step_maths_is_float32_for_low_precision_inputs():
    sigmas = flow_schedule(10, 3.0)
    x, v = torch.randn(2, 4).bfloat16(), torch.randn(2, 4).bfloat16()
    out = sde_step(x, v, sigmas, 1, 0.7)
    assert out.prev_sample.dtype == torch.bfloat16
    assert out.log_prob.dtype == torch.float32 and out.mean.dtype == torch.float32


def test_predict_x0_is_exact_on_straight_paths():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    for t in (1.0, 0.7, 0.25, 0.01):
        xt = (1 - t) * x0 + t * noise
        torch.testing.assert_close(predict_x0(xt, noise - x0, t), x0, rtol=0, atol=1e-5)
    t = torch.tensor([1.0, 0.5, 0.3, 0.2, 0.1])
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(predict_x0(xt, noise - x0, t), x0, rtol=0, atol=1e-5)


class GaussianFlow:
    """Exact velocity of the rectified flow from N(0, 1) noise to 1-D data N(mu, s0^2).

    x_t = (1-t) x0 + t eps is Gaussian with mean m_t = (1-t) mu and variance
    var_t = (1-t)^2 s0^2 + t^2; v(x, t) = E[eps - x0 | x_t = x] = -mu + (t - (1-t) s0^2)(x - m_t)/var_t.
    """

    def __init__(self, mu: float, s0: float):
        self.mu, self.s0 = mu, s0
        self.latent_shape = (1,)
        self.device = torch.device("cpu")
        self.compute_dtype = torch.float64

    def moments(self, t: float) -> tuple[float, float]:
        return (1 - t) * self.mu, math.sqrt((1 - t) ** 2 * self.s0**2 + t**2)

    def velocity(self, x, sigma, cond):
        t = sigma.view(-1, 1).double()
        m = (1 - t) * self.mu
        var = (1 - t) ** 2 * self.s0**2 + t**2
        return (-self.mu + (t - (1 - t) * self.s0**2) * (x.double() - m) / var).float()


@pytest.mark.parametrize("noise_level", [0.0, 0.7])
def test_sde_preserves_ode_marginals_on_gaussian_data(noise_level):
    # 100k particles: Monte-Carlo error of a mean/std is ~0.003-0.005 at these scales; 200 Euler steps
    # on shift-1 sigmas keep the discretisation bias of both ODE and SDE under ~0.01 (measured: the
    # largest deviation over the checked steps is 0.003 for the ODE, 0.009 for a = 0.7). Tolerance 0.03
    # leaves a 3x margin and still fails for a wrong drift (dropping the score term moves the final std by > 0.3).
    flow = GaussianFlow(mu=1.5, s0=0.5)
    sigmas = flow_schedule(200, 1.0)
    cond = {"dummy": torch.zeros(100_000, 1)}
    traj = rollout(flow, cond, None, sigmas, noise_level, 1.0, generator=torch.Generator().manual_seed(0))
    for k in (50, 100, 150, 200):
        m, s = flow.moments(float(sigmas[k]))
        xs = traj.states[:, k, 0]
        assert abs(xs.mean().item() - m) < 0.03, (k, xs.mean().item(), m)
        assert abs(xs.std().item() - s) < 0.03, (k, xs.std().item(), s)


def test_sde_without_score_correction_fails_the_marginal_check():
    # Guard that the marginal test can fail: plain Euler-Maruyama with added noise (no score drift).
    flow = GaussianFlow(mu=1.5, s0=0.5)
    sigmas = flow_schedule(200, 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, 1, generator=g)
    for i in range(200):
        v = flow.velocity(x, sigmas[i].expand(x.shape[0]), None)
        x = ode_step(x, v, sigmas, i) + sde_std(sigmas, i, 0.7) * torch.sqrt(sigmas[i] - sigmas[i + 1]) * torch.randn(
            x.shape, generator=g
        )
    assert abs(x.std().item() - 0.5) > 0.1


def test_rollout_records_projections_and_guidance_one_equals_no_guidance():
    flow = GaussianFlow(mu=-1.0, s0=0.3)
    sigmas = flow_schedule(10, 3.0)
    cond = {"dummy": torch.zeros(8, 1)}
    x_init = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    a = rollout(flow, cond, None, sigmas, 0.7, 1.0, generator=torch.Generator().manual_seed(2), x_init=x_init)
    b = rollout(flow, cond, cond, sigmas, 0.7, 1.0, generator=torch.Generator().manual_seed(2), x_init=x_init)
    assert torch.equal(a.states, b.states) and torch.equal(a.log_probs, b.log_probs)
    assert a.states.shape == (8, 11, 1) and a.log_probs.shape == (8, 10) and a.x0_hat.shape == (8, 10, 1)
    for i in range(10):
        v = flow.velocity(a.states[:, i], sigmas[i].expand(8), None)
        torch.testing.assert_close(a.x0_hat[:, i], predict_x0(a.states[:, i], v, sigmas[i]))
    # Re-evaluating each recorded transition reproduces the sampling log-probs (PPO ratio 1).
    for i in range(10):
        v = flow.velocity(a.states[:, i], sigmas[i].expand(8), None)
        out = sde_step(a.states[:, i], v, sigmas, i, 0.7, prev_sample=a.states[:, i + 1])
        torch.testing.assert_close(out.log_prob, a.log_probs[:, i])


def test_rollout_with_an_sde_window_is_the_ode_after_it():
    """Per-step noise levels (Flow-GRPO-Fast): SDE on the first 3 steps, then exactly the Euler ODE from
    the state the SDE reached, with log-prob 0 on the deterministic steps."""
    flow = GaussianFlow(mu=-1.0, s0=0.3)
    sigmas = flow_schedule(10, 3.0)
    cond = {"dummy": torch.zeros(8, 1)}
    x_init = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    levels = [0.7] * 3 + [0.0] * 7
    mixed = rollout(flow, cond, None, sigmas, levels, 1.0, generator=torch.Generator().manual_seed(2), x_init=x_init)
    sde = rollout(flow, cond, None, sigmas, 0.7, 1.0, generator=torch.Generator().manual_seed(2), x_init=x_init)
    assert torch.equal(mixed.states[:, :4], sde.states[:, :4])  # same noise on the SDE steps
    assert (mixed.log_probs[:, :3] != 0).all() and (mixed.log_probs[:, 3:] == 0).all()
    ode = rollout(flow, cond, None, sigmas[3:], 0.0, 1.0, x_init=mixed.states[:, 3])
    torch.testing.assert_close(mixed.states[:, 3:], ode.states)
    with pytest.raises(ValueError, match="9 levels for 10 steps"):
        rollout(flow, cond, None, sigmas, levels[:9], 1.0)
