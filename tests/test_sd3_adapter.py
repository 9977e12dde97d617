"""SD3FlowModel on a tiny random StableDiffusion3Pipeline built in-process (no download)."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch  # noqa: E402

from _tiny_pipelines import MAX_TOKENS, RESOLUTION, one_torch_thread, sd3_pipeline  # noqa: E402, F401
from vgpo.errors import VgpoError  # noqa: E402
from vgpo.models.lora import DEFAULT_TARGETS  # noqa: E402
from vgpo.models.protocol import FlowModel  # noqa: E402
from vgpo.models.sd3 import SD3FlowModel  # noqa: E402
from vgpo.sampling import ode_step, rollout  # noqa: E402

PROMPTS = ["a red cat", "two blue dogs"]
LORA = {"rank": 4, "alpha": 8}


def make_model(seed: int = 0, **kwargs) -> SD3FlowModel:
    kwargs.setdefault("lora", LORA)
    return SD3FlowModel(sd3_pipeline(seed), RESOLUTION, device="cpu", max_sequence_length=MAX_TOKENS, **kwargs)


def perturb_lora(model: SD3FlowModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    state = {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in model.trainable_state_dict().items()}
    model.load_trainable_state_dict(state)


def noise(batch: int, model: SD3FlowModel, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *model.latent_shape), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> SD3FlowModel:
    return make_model()


def test_protocol_and_shapes(model):
    assert isinstance(model, FlowModel)
    root, blocks, whole = model.fsdp_units()  # FSDP units: every transformer block, then the transformer
    assert root is model.transformer and whole == [] and len(blocks) == len(model.transformer.transformer_blocks) > 0
    assert model.latent_shape == (4, RESOLUTION // 2, RESOLUTION // 2)
    cond = model.encode_prompts(PROMPTS)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert cond["prompt_embeds"].shape == (2, MAX_TOKENS + MAX_TOKENS, 64)  # CLIP tokens + T5 tokens
    assert cond["pooled_prompt_embeds"].shape == (2, 64)
    neg = model.negative_condition(3)
    assert neg["prompt_embeds"].shape == (3, 2 * MAX_TOKENS, 64)
    # The empty prompt's encoding, cached.
    empty = model.encode_prompts([""])
    torch.testing.assert_close(neg["pooled_prompt_embeds"][2], empty["pooled_prompt_embeds"][0])
    assert model.negative_condition(1)["prompt_embeds"].data_ptr() == neg["prompt_embeds"].data_ptr()


@pytest.mark.parametrize("steps", [1, 4, 10, 40])
def test_schedule_equals_scheduler_sigmas(model, steps):
    sched = model.pipeline.scheduler
    assert model.shift == 3.0
    sched.set_timesteps(steps)
    torch.testing.assert_close(model.schedule(steps), sched.sigmas.float(), rtol=0, atol=1e-6)


def test_velocity_sign_one_euler_step_equals_scheduler_step(model):
    """Our ode_step with v = model.velocity equals diffusers' scheduler.step on the raw transformer."""
    sched = model.pipeline.scheduler
    sched.set_timesteps(4)
    cond = model.encode_prompts(PROMPTS)
    x = noise(2, model)
    sigmas = model.schedule(4)
    for i in (0, 2):
        t = sched.timesteps[i]
        raw = model.transformer(
            hidden_states=x,
            timestep=t.expand(2),
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]
        sched.set_timesteps(4)
        sched.set_begin_index(i)  # step() starts at index i
        expected = sched.step(raw, t, x, return_dict=False)[0]
        ours = ode_step(x, model.velocity(x, sigmas[i].expand(2), cond), sigmas, i)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_ode_rollout_reproduces_the_pipeline(model):
    """Schedule, timestep scale, velocity sign, CFG, negative prompt and decode all at once:
    our noise-free rollout equals ``pipeline(...)`` from the same initial latents."""
    x0 = noise(2, model, seed=3)
    g = 4.5
    ref_latents = model.pipeline(
        PROMPTS,
        latents=x0.clone(),
        num_inference_steps=3,
        guidance_scale=g,
        height=RESOLUTION,
        width=RESOLUTION,
        max_sequence_length=MAX_TOKENS,
        output_type="latent",
    ).images
    ref_images = model.pipeline(
        PROMPTS,
        latents=x0.clone(),
        num_inference_steps=3,
        guidance_scale=g,
        height=RESOLUTION,
        width=RESOLUTION,
        max_sequence_length=MAX_TOKENS,
        output_type="pt",
    ).images
    traj = rollout(
        model,
        model.encode_prompts(PROMPTS),
        model.negative_condition(2),
        model.schedule(3),
        noise_level=0.0,
        guidance_scale=g,
        x_init=x0,
    )
    torch.testing.assert_close(traj.final, ref_latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.decode(traj.final), ref_images.float(), rtol=1e-4, atol=1e-5)


def test_sde_rollout_and_decode(model):
    cond = model.encode_prompts(PROMPTS)
    traj = rollout(
        model,
        cond,
        model.negative_condition(2),
        model.schedule(4),
        noise_level=0.7,
        guidance_scale=4.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert traj.states.shape == (2, 5, *model.latent_shape)
    assert traj.log_probs.shape == (2, 4) and torch.isfinite(traj.log_probs).all()
    images = model.decode(traj.final)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_only_lora_parameters_are_trainable(model):
    trainable = model.trainable_parameters()
    names = [n for n, p in model.transformer.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == len(trainable)
    assert {id(p) for p in trainable} == {id(p) for p in model.transformer.parameters() if p.requires_grad}
    for module in (
        model.pipeline.text_encoder,
        model.pipeline.text_encoder_2,
        model.pipeline.text_encoder_3,
        model.vae,
    ):
        assert not any(p.requires_grad for p in module.parameters())
    assert all(p.dtype == torch.float32 for p in trainable)
    modules = {n.split(".lora_")[0] for n in names}
    suffixes = {next(t for t in DEFAULT_TARGETS if m.endswith("." + t)) for m in modules}
    assert suffixes == set(DEFAULT_TARGETS)  # Flow-GRPO's targets, every one matched


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_lora(checkpointing):
    model = make_model(gradient_checkpointing=checkpointing)
    model.train_mode(True)
    cond = model.encode_prompts(PROMPTS)
    v = model.velocity(noise(2, model), torch.tensor([0.7, 0.3]), cond)
    v.square().mean().backward()
    grads = {n: p.grad for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if ".lora_B." in n)  # B = 0 at init: A gets none


def test_reference_is_the_base_model():
    model = make_model()
    cond = model.encode_prompts(PROMPTS)
    x, s = noise(2, model), torch.tensor([0.8, 0.4])
    with torch.no_grad():
        base = model.velocity(x, s, cond)  # LoRA B = 0: the adapter starts as the base model
        perturb_lora(model)
        tuned = model.velocity(x, s, cond)
        with model.reference():
            ref = model.velocity(x, s, cond)
        after = model.velocity(x, s, cond)
    assert (tuned - base).abs().max() > 1e-3
    torch.testing.assert_close(ref, base)
    torch.testing.assert_close(after, tuned)
    assert all(p.requires_grad for p in model.trainable_parameters())  # restored after the context


def test_state_dict_round_trip_and_mismatch():
    a, b = make_model(), make_model()
    perturb_lora(a)
    state = a.trainable_state_dict()
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in state)
    assert not any("default" in k for k in state)  # PEFT naming, no adapter name
    b.load_trainable_state_dict(state)
    for k, v in b.trainable_state_dict().items():
        torch.testing.assert_close(v, state[k])
    with pytest.raises(VgpoError, match="missing"):
        b.load_trainable_state_dict(dict(list(state.items())[1:]))
    wrong_rank = make_model(lora={"rank": 2, "alpha": 4})
    with pytest.raises(VgpoError, match="shape"):
        wrong_rank.load_trainable_state_dict(state)


@pytest.mark.parametrize("merged_forward", [False, True])
def test_saved_lora_loads_into_diffusers_pipeline(tmp_path, merged_forward):
    """save_lora writes what ``pipe.load_lora_weights`` reads, alpha/r scale included; the merged-weight layers
    (lora.merged_forward) compute what diffusers' own PEFT layers compute from the saved file."""
    model = make_model(lora=dict(LORA, merged_forward=merged_forward))
    assert any(type(m).__name__ == "MergedLinear" for m in model.transformer.modules()) == merged_forward
    perturb_lora(model)
    path = model.save_lora(tmp_path)
    assert path.is_file()
    fresh = sd3_pipeline(0)  # same seed: same base weights
    fresh.load_lora_weights(str(tmp_path))
    cond = model.encode_prompts(PROMPTS)
    x, s = noise(2, model), torch.tensor([0.9, 0.2])
    with torch.no_grad():
        ours = model.velocity(x, s, cond)
        theirs = fresh.transformer(
            hidden_states=x,
            timestep=1000 * s,
            encoder_hidden_states=cond["prompt_embeds"],
            pooled_projections=cond["pooled_prompt_embeds"],
            return_dict=False,
        )[0]
        with model.reference():
            base = model.velocity(x, s, cond)
    assert (ours - base).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


def test_from_pretrained_local_dir(tmp_path):
    sd3_pipeline(0).save_pretrained(tmp_path / "pipe")
    model = SD3FlowModel.from_pretrained(
        tmp_path / "pipe", RESOLUTION, local_files_only=True, device="cpu", max_sequence_length=MAX_TOKENS, lora=LORA
    )
    other = make_model()
    cond = other.encode_prompts(PROMPTS)
    torch.testing.assert_close(model.encode_prompts(PROMPTS), cond)
    x, s = noise(2, model), torch.tensor([0.5, 0.5])
    with torch.no_grad():
        torch.testing.assert_close(model.velocity(x, s, cond), other.velocity(x, s, cond))
    with pytest.raises(VgpoError, match="no-such-dir"):
        SD3FlowModel.from_pretrained(tmp_path / "no-such-dir", RESOLUTION, local_files_only=True, device="cpu")


def test_bf16_autocast_keeps_lora_vae_and_outputs_float32():
    """precision="bf16" (the GPU default), exercised here with CPU autocast."""
    exact, mixed = make_model(), make_model(precision="bf16")
    perturb_lora(exact)
    mixed.load_trainable_state_dict(exact.trainable_state_dict())
    assert mixed.transformer.dtype == torch.bfloat16 and mixed.pipeline.text_encoder_3.dtype == torch.bfloat16
    assert mixed.vae.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in mixed.trainable_parameters())
    x, s = noise(2, mixed), torch.tensor([0.7, 0.3])
    v = mixed.velocity(x, s, mixed.encode_prompts(PROMPTS))
    assert v.dtype == torch.float32
    with torch.no_grad():
        v_exact = exact.velocity(x, s, exact.encode_prompts(PROMPTS))
    assert (v.detach() - v_exact).abs().max() < 0.1 * v_exact.abs().max()
    v.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in mixed.trainable_parameters())
    assert mixed.decode(x).dtype == torch.float32


def test_bad_options():
    with pytest.raises(VgpoError, match="resolution"):
        SD3FlowModel(sd3_pipeline(0), 18, device="cpu")
    with pytest.raises(VgpoError, match="lora.rnak"):
        SD3FlowModel(sd3_pipeline(0), RESOLUTION, device="cpu", lora={"rnak": 4})
    with pytest.raises(VgpoError, match="target_modules"):
        SD3FlowModel(sd3_pipeline(0), RESOLUTION, device="cpu", lora={"target_modules": ["nope"]})
    with pytest.raises(VgpoError, match="precision"):
        SD3FlowModel(sd3_pipeline(0), RESOLUTION, device="cpu", precision="fp8")
