"""The tiny model under bf16 autocast: what it computes stays float32 outside the network, and the
network's output stays close to float32's (fast, CPU)."""

import math
from pathlib import Path

import pytest
import torch

from vgpo.errors import VgpoError
from vgpo.models import load_model
from vgpo.models.tiny import TinyFlowModel, resolve_precision
from vgpo.perf import cpu_flags, cpu_peak
from vgpo.sampling import guided_velocity, rollout, sde_step
from vgpo.train.losses import ppo_clip_loss

SHAPES_BASE = Path(__file__).parent.parent / "checkpoints" / "shapes-base"
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", ""]

# bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%) on every matmul/convolution input; through
# the U-Net's ~20 layers the velocity moved by 0.3-0.5% in relative L2 norm on the shipped base (measured),
# so 2% leaves room for other machines' kernels without letting a wrong cast through (fp16 overflow,
# a missing float32 upcast of the output, a layer skipped under autocast all show up as > 10%).
BF16_RELATIVE_TOLERANCE = 2e-2
# The PPO ratio on the first inner step: the update re-runs the rollout's network on the same inputs in
# other batches, with the gradient graph. Measured on the shipped Shapes base: max |r - 1| = 5e-7 in
# fp32 and exactly 0 in bf16 (oneDNN's bf16 kernels gave the same bits at every batch size). Running the
# update's attention through another kernel than the rollout's moved it to 2e-3 in bf16, more than the
# presets' clip range (1e-3): the bound is a tenth of that range, so nothing is clipped by rounding alone.
RATIO_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    # On a shared 2-core machine two OpenMP threads wait on each other at every barrier.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_precision_option_is_validated_and_auto_resolves():
    with pytest.raises(VgpoError, match="model_options.precision"):
        load_model("tiny", str(SHAPES_BASE), {"precision": "fp16"})
    with pytest.raises(VgpoError, match="expected: lora, precision"):
        load_model("tiny", str(SHAPES_BASE), {"dtype": "bf16"})
    assert load_model("tiny", str(SHAPES_BASE), {"precision": "bf16"}).precision == "bf16"
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_bf16_velocity_is_float32_and_close_to_fp32():
    fp32, bf16 = (TinyFlowModel.load(SHAPES_BASE, precision=p) for p in ("fp32", "bf16"))
    torch.manual_seed(0)
    x, sigma = torch.randn(len(PROMPTS), 3, 32, 32), torch.tensor([1.0, 0.7, 0.4, 0.1])
    cond = fp32.encode_prompts(PROMPTS)
    with torch.no_grad():
        v32, v16 = fp32.velocity(x, sigma, cond), bf16.velocity(x, sigma, cond)
    assert v16.dtype == torch.float32 and v16.shape == v32.shape
    rel = ((v16 - v32).flatten(1).norm(dim=1) / v32.flatten(1).norm(dim=1)).max().item()
    print(f"bf16 relative L2 error {rel:.2e}")
    assert 0 < rel < BF16_RELATIVE_TOLERANCE, rel  # > 0: autocast did run in bf16


def test_bf16_sde_log_prob_is_the_float32_formula(tiny_checkpoint):
    bf16 = TinyFlowModel.load(tiny_checkpoint, precision="bf16")
    torch.manual_seed(1)
    sigmas = bf16.schedule(10)
    x, prev = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        v = guided_velocity(bf16, x, sigmas[2], bf16.encode_prompts(PROMPTS), bf16.negative_condition(4), 4.5)
    out = sde_step(x, v, sigmas, 2, 0.7, prev_sample=prev)
    assert v.dtype == out.log_prob.dtype == out.mean.dtype == torch.float32
    # The same formula in float64 from the float32 velocity: the step maths sees no bf16 value.
    s, dt = sigmas[2].double(), (sigmas[3] - sigmas[2]).double()
    std = 0.7 * torch.sqrt(s / (1 - s))
    mean = x.double() * (1 + std**2 * dt / (2 * s)) + v.double() * (1 + std**2 * (1 - s) / (2 * s)) * dt
    scale = std * torch.sqrt(-dt)
    expected = -((prev.double() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(out.log_prob.double(), expected.mean(dim=(1, 2, 3)), rtol=1e-6, atol=1e-5)


# On an AMX Xeon oneDNN's bf16 kernels round differently at the update's batch of 2 than at the rollout's 8:
# the first inner step's ratio measured |r - 1| = 9.8e-4 there, as wide as the tiny presets' clip range
# (1e-3). Why the trainer recomputes PPO's old log-probs below float32 (`old_log_probs: auto`; its own test is
# tests/test_trainer.py::test_recomputed_old_log_probs_are_the_update_forward_bits); strict, so a change shows.
AMX_BF16 = pytest.mark.xfail(
    "amx_tile" in cpu_flags(), reason="bf16 PPO ratio on AMX: |r - 1| = 9.8e-4 measured", strict=True
)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=AMX_BF16)])
def test_first_inner_step_ratio_is_one_to_tolerance(precision):
    """The rollout samples 8 trajectories in one batch without autograd; the update re-evaluates them
    2 at a time with the graph on (another batch), as the trainer does."""
    model = TinyFlowModel.load(SHAPES_BASE, precision=precision)
    sigmas = model.schedule(4)
    prompts = PROMPTS * 2
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    traj = rollout(
        model, model.encode_prompts(prompts), model.negative_condition(len(prompts)), sigmas, 0.7, 4.5, generator=gens
    )
    worst = 0.0
    for mb in torch.arange(len(prompts)).split(2):
        cond, uncond = model.encode_prompts([prompts[i] for i in mb]), model.negative_condition(len(mb))
        for j in range(traj.log_probs.shape[1]):
            v = guided_velocity(model, traj.states[mb, j], sigmas[j], cond, uncond, 4.5)
            out = sde_step(traj.states[mb, j], v, sigmas, j, 0.7, prev_sample=traj.states[mb, j + 1])
            _, ratio = ppo_clip_loss(out.log_prob, traj.log_probs[mb, j], torch.ones(len(mb)), 1e-3)
            worst = max(worst, (ratio - 1).abs().max().item())
    print(f"{precision} first-step max |ratio - 1| {worst:.2e}")
    assert worst < RATIO_TOLERANCE, worst


def test_bf16_gradients_reach_float32_parameters(tiny_checkpoint):
    bf16 = TinyFlowModel.load(tiny_checkpoint, precision="bf16")
    cond = bf16.encode_prompts(PROMPTS)
    v = bf16.velocity(torch.randn(4, 3, 16, 16), torch.full((4,), 0.5), cond)
    v.square().mean().backward()
    params = bf16.trainable_parameters()
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


def test_cpu_peak_counts_cores_clock_and_units():
    fp32 = cpu_peak("fp32", cores=2, clock_ghz=3.0, fma_units=2)
    assert fp32.gflops == pytest.approx(2 * 3.0 * fp32.flops_per_cycle)
    assert fp32.flops_per_cycle in (32, 64)  # AVX2 or AVX-512: 2 FMA x 8 or 16 lanes x 2
    bf16 = cpu_peak("bf16", cores=2, clock_ghz=3.0, fma_units=2)
    assert bf16.flops_per_cycle >= fp32.flops_per_cycle
    with pytest.raises(ValueError):
        cpu_peak("fp16")
