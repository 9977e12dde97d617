"""FluxFlowModel on a tiny random FluxPipeline built in-process (no download)."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch  # noqa: E402

from _tiny_pipelines import MAX_TOKENS, RESOLUTION, flux_pipeline, one_torch_thread  # noqa: E402, F401
from vgpo.errors import VgpoError  # noqa: E402
from vgpo.models.flux import FluxFlowModel, calculate_shift, flux_schedule, pack_latents, unpack_latents  # noqa: E402
from vgpo.models.protocol import FlowModel  # noqa: E402
from vgpo.sampling import rollout, sde_step  # noqa: E402

PROMPTS = ["a red cat", "two blue dogs"]
LORA = {"rank": 4, "alpha": 8}
GUIDANCE = 3.5


def make_model(seed: int = 0, **kwargs) -> FluxFlowModel:
    kwargs.setdefault("lora", LORA)
    return FluxFlowModel(
        flux_pipeline(seed), RESOLUTION, device="cpu", max_sequence_length=MAX_TOKENS, guidance_scale=GUIDANCE, **kwargs
    )


def perturb_lora(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    model.load_trainable_state_dict(
        {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in model.trainable_state_dict().items()}
    )


def noise(batch, model, seed=0):
    return torch.randn((batch, *model.latent_shape), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> FluxFlowModel:
    return make_model()


def test_protocol_and_shapes(model):
    assert isinstance(model, FlowModel)
    root, blocks, whole = model.fsdp_units()  # FSDP units: every transformer block, then the transformer
    assert (
        root is model.transformer
        and whole == []
        and len(blocks)
        == len(model.transformer.transformer_blocks) + len(model.transformer.single_transformer_blocks)
        > 0
    )
    h = RESOLUTION // 2  # tiny VAE: factor 2
    assert model.latent_shape == ((h // 2) ** 2, 16)
    cond = model.encode_prompts(PROMPTS)
    assert set(cond) == {"prompt_embeds", "pooled_prompt_embeds", "guidance"}
    assert cond["prompt_embeds"].shape == (2, MAX_TOKENS, 32)
    assert cond["pooled_prompt_embeds"].shape == (2, 32)
    torch.testing.assert_close(cond["guidance"], torch.full((2,), GUIDANCE))
    assert model.negative_condition(2) is None


def test_pack_unpack_round_trip_matches_diffusers():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = pack_latents(x)
    assert packed.shape == (2, 12, 16)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    torch.testing.assert_close(unpack_latents(packed, 6, 8), x)
    torch.testing.assert_close(unpack_latents(packed, 6, 8), FluxPipeline._unpack_latents(packed, 6 * 8, 8 * 8, 8))


def test_log_prob_over_packed_equals_unpacked(model):
    """Flow-GRPO issue #111: the SDE log-prob must be the same number over either layout."""
    x, v = noise(3, model, 0), noise(3, model, 1)
    sigmas = model.schedule(6)
    for i in (0, 3):
        packed = sde_step(x, v, sigmas, i, noise_level=0.8, generator=torch.Generator().manual_seed(i))
        unpacked = sde_step(
            model.unpack(x), model.unpack(v), sigmas, i, noise_level=0.8, prev_sample=model.unpack(packed.prev_sample)
        )
        torch.testing.assert_close(unpacked.log_prob, packed.log_prob, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.unpack(packed.mean), unpacked.mean)


@pytest.mark.parametrize("steps", [1, 4, 28])
@pytest.mark.parametrize("resolution", [RESOLUTION, 64])
def test_schedule_equals_pipeline_retrieve_timesteps(steps, resolution):
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_shift
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    model = (
        make_model()
        if resolution == RESOLUTION
        else FluxFlowModel(flux_pipeline(0), resolution, device="cpu", lora=LORA)
    )
    sched = model.pipeline.scheduler
    seq = model.latent_shape[0]
    c = sched.config
    mu = diffusers_shift(seq, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    assert model.mu == pytest.approx(mu)
    assert calculate_shift(4096, 256, 4096, 0.5, 1.15) == pytest.approx(1.15)
    # What FluxPipeline.__call__ does for `steps` steps at this resolution.
    retrieve_timesteps(sched, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    torch.testing.assert_close(model.schedule(steps), sched.sigmas.float(), rtol=0, atol=1e-6)


def test_static_shift_schedule_without_dynamic_shifting():
    s = flux_schedule(4, mu=None, shift=1.0)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_ode_rollout_reproduces_the_pipeline(model):
    """Guidance embedding, ids, timestep scale, schedule, packing and decode at once."""
    x0 = noise(2, model, seed=3)
    kw = dict(
        latents=x0.clone(),
        num_inference_steps=3,
        guidance_scale=GUIDANCE,
        height=RESOLUTION,
        width=RESOLUTION,
        max_sequence_length=MAX_TOKENS,
    )
    ref_latents = model.pipeline(PROMPTS, output_type="latent", **kw).images
    ref_images = model.pipeline(PROMPTS, output_type="pt", **kw).images
    traj = rollout(
        model, model.encode_prompts(PROMPTS), None, model.schedule(3), noise_level=0.0, guidance_scale=1.0, x_init=x0
    )
    torch.testing.assert_close(traj.final, ref_latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.decode(traj.final), ref_images.float(), rtol=1e-4, atol=1e-5)


def test_sde_rollout_and_decode(model):
    traj = rollout(
        model,
        model.encode_prompts(PROMPTS),
        None,
        model.schedule(4),
        noise_level=0.7,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert traj.states.shape == (2, 5, *model.latent_shape)
    assert torch.isfinite(traj.log_probs).all()
    images = model.decode(traj.final)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_guidance_changes_velocity(model):
    cond = model.encode_prompts(PROMPTS)
    x, s = noise(2, model), torch.tensor([0.6, 0.6])
    with torch.no_grad():
        v1 = model.velocity(x, s, cond)
        v2 = model.velocity(x, s, {**cond, "guidance": torch.full((2,), 7.0)})
    assert (v1 - v2).abs().max() > 1e-4


def test_lora_trainable_reference_and_gradients():
    model = make_model(gradient_checkpointing=True)
    names = [n for n, p in model.transformer.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    assert any(n.startswith("single_transformer_blocks.") for n in names)  # to_q/k/v there match too
    for enc in (model.pipeline.text_encoder, model.pipeline.text_encoder_2, model.vae):
        assert not any(p.requires_grad for p in enc.parameters())
    cond = model.encode_prompts(PROMPTS)
    x, s = noise(2, model), torch.tensor([0.8, 0.4])
    with torch.no_grad():
        base = model.velocity(x, s, cond)
    perturb_lora(model)
    with torch.no_grad():
        tuned = model.velocity(x, s, cond)
        with model.reference():
            ref = model.velocity(x, s, cond)
    assert (tuned - base).abs().max() > 1e-3
    torch.testing.assert_close(ref, base)
    model.velocity(x, s, cond).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())


def test_saved_lora_loads_into_diffusers_pipeline(tmp_path):
    model = make_model()
    perturb_lora(model)
    model.save_lora(tmp_path)
    fresh = flux_pipeline(0)
    fresh.load_lora_weights(str(tmp_path))
    cond = model.encode_prompts(PROMPTS)
    x, s = noise(2, model), torch.tensor([0.9, 0.2])
    with torch.no_grad():
        ours = model.velocity(x, s, cond)
        theirs = fresh.transformer(
            hidden_states=x,
            timestep=s,
            guidance=cond["guidance"],
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=torch.zeros(MAX_TOKENS, 3),
            img_ids=model.image_ids,
            return_dict=False,
        )[0]
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)


def test_bad_resolution():
    with pytest.raises(VgpoError, match="resolution"):
        FluxFlowModel(flux_pipeline(0), 18, device="cpu")
