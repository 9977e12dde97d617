"""The latent autoencoder (models/autoencoder.py), its trainer (`vgpo pretrain-ae`) and the tiny model in its
latent space. Random small autoencoders, and the shipped `checkpoints/shapes-ae` where a test says so."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vgpo.errors import VgpoError
from vgpo.models.autoencoder import Autoencoder, AutoencoderConfig, latent_statistics, load_autoencoder
from vgpo.models.tiny import TinyConfig, TinyFlowModel
from vgpo.pretrain import PretrainConfig, pretrain
from vgpo.pretrain_ae import AutoencoderTrainConfig, edge_mask, pretrain_autoencoder, reconstruction_loss, render_batch
from vgpo.rewards import build
from vgpo.sampling.rollout import rollout
from vgpo.worlds import get_world


def small_ae(image_size=(32, 32), seed=0, **extra) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(AutoencoderConfig(image_size=image_size, channels=(8, 16), **extra))


def shapes_renders(n: int, seed: int = 0) -> torch.Tensor:
    world = get_world("shapes")
    return render_batch(world, world.load_prompts(world.train_file), n, seed)


@pytest.mark.parametrize(
    "image_size,downsample,latent",
    [((32, 32), 4, (4, 8, 8)), ((32, 96), 4, (4, 8, 24)), ((32, 32), 2, (4, 16, 16))],
)
def test_shapes_of_latents_and_reconstructions(image_size, downsample, latent):
    # Shapes' 32x32 renders to 8x8x4, the text world's 32x96 to 8x24x4; 16x16x4 with one stage.
    ae = small_ae(image_size, downsample=downsample)
    assert ae.latent_shape == latent
    images = torch.rand(2, 3, *image_size)
    z = ae.encode_latents(images)
    assert z.shape == (2, *latent)
    out = ae.decode_latents(z)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_config_is_validated():
    with pytest.raises(VgpoError, match="^image_size:"):
        AutoencoderConfig(image_size=(30, 32))
    with pytest.raises(VgpoError, match="^channels:"):
        AutoencoderConfig(channels=(12, 16))
    with pytest.raises(VgpoError, match="^scaling_factor:"):
        AutoencoderConfig(scaling_factor=0.0)
    with pytest.raises(VgpoError, match="^downsample:"):
        AutoencoderConfig(downsample=8)
    with pytest.raises(VgpoError, match="^image_size: .*downsample=4"):
        AutoencoderConfig(image_size=(34, 32))


def test_a_downsample_4_checkpoint_written_before_the_option_still_loads(tmp_path):
    # the parameter names of the two-stage autoencoder are those it had before `downsample` existed
    # (second stride-2 stage at encoder.4, its upsampling at decoder.2), and a config.json without the
    # field reads as 4
    ae = small_ae()
    assert isinstance(ae.encoder[4], torch.nn.Conv2d) and ae.encoder[4].stride == (2, 2)
    assert len(ae.encoder) == 9 and len(ae.decoder) == 9
    ae.save(tmp_path / "ae")
    meta = json.loads((tmp_path / "ae" / "config.json").read_text())
    del meta["arch"]["downsample"]
    (tmp_path / "ae" / "config.json").write_text(json.dumps(meta))
    assert load_autoencoder(tmp_path / "ae").cfg == ae.cfg


def test_scaling_and_shift_are_sd3s_convention():
    ae = small_ae(scaling_factor=2.0, shift_factor=0.5)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        raw = ae.encode(images * 2 - 1)
        torch.testing.assert_close(ae.encode_latents(images), (raw - 0.5) * 2.0)
        latents = torch.randn(2, *ae.latent_shape)
        expected = ((ae.decode(latents / 2.0 + 0.5) + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(ae.decode_latents(latents), expected)


def test_measured_factors_standardise_the_latents():
    ae = small_ae()
    images = shapes_renders(32)
    scale, shift = latent_statistics(ae, images)
    with torch.no_grad():
        raw = ae.encode(images * 2 - 1).double()
    assert shift == pytest.approx(raw.mean().item(), rel=1e-6)
    assert scale == pytest.approx(1 / raw.std(unbiased=False).item(), rel=1e-6)
    ae.cfg.scaling_factor, ae.cfg.shift_factor = scale, shift
    with torch.no_grad():
        z = ae.encode_latents(images)
    assert abs(z.mean().item()) < 1e-4
    assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_save_load_round_trip(tmp_path):
    ae = small_ae(scaling_factor=1.7, shift_factor=-0.2)
    ae.save(tmp_path / "ae")
    loaded = load_autoencoder(tmp_path / "ae", image_size=(32, 32))
    assert loaded.cfg == ae.cfg
    assert not any(p.requires_grad for p in loaded.parameters())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.decode_latents(loaded.encode_latents(images)),
            ae.decode_latents(ae.encode_latents(images)),
            rtol=0,
            atol=0,
        )
    with pytest.raises(VgpoError, match="trained on 32x32 images, the model draws 32x96"):
        load_autoencoder(tmp_path / "ae", image_size=(32, 96))
    with pytest.raises(VgpoError, match="missing config.json"):
        load_autoencoder(tmp_path / "nothing")


def _train_cfg(tmp_path, **kw) -> AutoencoderTrainConfig:
    base = dict(
        out=str(tmp_path),
        steps=24,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        channels=[8, 16],
        stats_images=16,
        save_every=12,
        threads=1,
    )
    return AutoencoderTrainConfig(**{**base, **kw})


def test_few_steps_of_training_lower_the_loss(tmp_path):
    out = pretrain_autoencoder(_train_cfg(tmp_path))
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4
    meta = json.loads((out / "config.json").read_text())
    assert meta["train"]["completed_steps"] == 24 and meta["train"]["wall_s"] >= 0
    assert meta["arch"]["scaling_factor"] != 1.0  # measured, not the default
    assert (out / "pretrain_time.json").is_file()
    load_autoencoder(out, image_size=(32, 32))


def test_a_resumed_run_ends_where_a_straight_one_does(tmp_path):
    straight = pretrain_autoencoder(_train_cfg(tmp_path / "a", steps=4, save_every=2))
    pretrain_autoencoder(_train_cfg(tmp_path / "b", steps=2, save_every=2))
    # a resume file written before `downsample` existed lacks it, and was built with its default
    state = torch.load(tmp_path / "b" / "resume.pt", weights_only=True)
    del state["arch"]["downsample"]
    torch.save(state, tmp_path / "b" / "resume.pt")
    resumed = pretrain_autoencoder(_train_cfg(tmp_path / "b", steps=4, save_every=2))
    a, b = (load_file(str(d / "autoencoder.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "pretrain_time.json").read_text())["invocations"] == 2
    with pytest.raises(VgpoError, match="resume.pt: written for another architecture"):
        pretrain_autoencoder(_train_cfg(tmp_path / "b", steps=6, latent_channels=2))


def test_a_run_extended_with_a_cooldown_ends_where_a_straight_one_does(tmp_path):
    # the cooldown touches only the last steps: 2 constant steps, resumed to 4 with a 2-step cooldown,
    # is the computation of 4 steps with that cooldown from the start (as `vgpo pretrain`'s)
    straight = pretrain_autoencoder(_train_cfg(tmp_path / "a", steps=4, cooldown_steps=2, save_every=2))
    pretrain_autoencoder(_train_cfg(tmp_path / "b", steps=2, save_every=2))
    resumed = pretrain_autoencoder(_train_cfg(tmp_path / "b", steps=4, cooldown_steps=2, save_every=2))
    a, b = (load_file(str(d / "autoencoder.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_edge_weight_counts_an_error_at_an_edge_more_than_one_in_a_flat_region():
    target = torch.zeros(1, 3, 8, 8)
    target[:, :, 2:6, 2:6] = 1.0  # a square: its border rows/columns and the ring around it are edges
    mask = edge_mask(target)
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 4, 4] == 0  # far background, square's interior
    assert mask[0, 0, 1, 1] == 1 and mask[0, 0, 2, 2] == 1 and mask[0, 0, 5, 3] == 1
    assert mask.sum() == 6 * 6 - 2 * 2  # the block 1..6 around the square, less its flat interior 3..4
    at_edge, flat = target.clone(), target.clone()
    at_edge[0, 0, 2, 2] += 0.5
    flat[0, 0, 0, 7] += 0.5
    # plain MSE cannot tell them apart; weight 3 makes the edge error (1 + 3) / 1 = 4 times the other
    plain = F.mse_loss(flat, target)
    assert reconstruction_loss(at_edge, target, 0.0) == reconstruction_loss(flat, target, 0.0) == plain
    ratio = reconstruction_loss(at_edge, target, 3.0) / reconstruction_loss(flat, target, 3.0)
    assert ratio.item() == pytest.approx(4.0)
    # normalised to mean weight 1: a uniform error costs what plain MSE says
    uniform = target + 0.1
    assert reconstruction_loss(uniform, target, 3.0).item() == pytest.approx(F.mse_loss(uniform, target).item())


def test_train_config_is_validated():
    with pytest.raises(VgpoError, match="^splits:"):
        AutoencoderTrainConfig(splits=["dev"])
    with pytest.raises(VgpoError, match="^cooldown_steps:"):
        AutoencoderTrainConfig(steps=10, cooldown_steps=11)
    with pytest.raises(VgpoError, match="^edge_weight:"):
        AutoencoderTrainConfig(edge_weight=-1.0)


def test_cooldown_decays_the_learning_rate_to_zero_over_the_last_steps(tmp_path):
    out = pretrain_autoencoder(_train_cfg(tmp_path, steps=6, warmup_steps=2, cooldown_steps=3, lr=1e-3))
    # the log holds the rate after each step, i.e. the one the next step uses (0 after the last)
    rates = [json.loads(line)["lr"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3, 0.0])


def latent_model(tmp_path, downsample: int = 4, **extra) -> TinyFlowModel:
    small_ae(scaling_factor=1.5, shift_factor=0.1, downsample=downsample).save(tmp_path / "ae")
    world = get_world("shapes")
    torch.manual_seed(0)
    cfg = TinyConfig(
        vocab=world.vocabulary(),
        image_size=(32, 32),
        channels=(8, 16, 16),
        text_dim=16,
        text_layers=1,
        heads=2,
        emb_dim=32,
        latent=str(tmp_path / "ae"),
        **extra,
    )
    model = TinyFlowModel(cfg)
    with torch.no_grad():  # the zero-initialised output layer would make the policy the zero velocity
        model.net.conv_out.weight.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("downsample,side", [(4, 8), (2, 16)])
def test_latent_model_rolls_out_decodes_and_is_rewarded(tmp_path, downsample, side):
    model = latent_model(tmp_path, downsample, text_encoder="ordered")
    assert model.latent_shape == (4, side, side)
    metas = get_world("shapes").load_prompts(get_world("shapes").train_file)[:3]
    cond = model.encode_prompts([m["prompt"] for m in metas])
    traj = rollout(
        model,
        cond,
        model.negative_condition(3),
        model.schedule(4),
        0.7,
        4.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert traj.final.shape == (3, 4, side, side)
    images = model.decode(traj.final)
    assert images.shape == (3, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    scores = build("geneval-shapes-server")(images, [m["prompt"] for m in metas], metas)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    # Pretraining data goes through the autoencoder's encoder, and back.
    renders = shapes_renders(2)
    with torch.no_grad():
        z = model.encode_images(renders)
        assert z.shape == (2, 4, side, side)
        ae = model.autoencoder
        torch.testing.assert_close(model.decode(z), ae.decode_latents(ae.encode_latents(renders)))
    # The U-Net is what trains; the autoencoder stays frozen and out of the checkpoint.
    assert not any(p.requires_grad for p in model.autoencoder.parameters())
    assert not any(k.startswith(("encoder.", "decoder.")) for k in model.trainable_state_dict())


def test_latent_model_round_trips_and_reports_a_bad_folder(tmp_path):
    model = latent_model(tmp_path)
    model.save(tmp_path / "model")
    loaded = TinyFlowModel.load(tmp_path / "model")
    assert loaded.latent_shape == (4, 8, 8) and loaded.autoencoder.cfg.scaling_factor == 1.5
    with pytest.raises(VgpoError, match="^latent .*nowhere: missing config.json"):
        TinyFlowModel(TinyConfig(vocab=["a"], latent=str(tmp_path / "nowhere")))


def test_pretraining_in_latent_space(tmp_path):
    small_ae().save(tmp_path / "ae")
    cfg = PretrainConfig(
        out=str(tmp_path / "base"),
        steps=2,
        batch_size=4,
        warmup_steps=1,
        channels=[8, 16, 16],
        save_every=2,
        threads=1,
        latent=str(tmp_path / "ae"),
        text_encoder="ordered",
    )
    out = pretrain(cfg)
    model = TinyFlowModel.load(out)
    assert model.latent_shape == (4, 8, 8) and model.cfg.text_encoder == "ordered"
    assert model.net.conv_in.in_channels == 4 and model.net.conv_out.out_channels == 4


def test_the_shipped_shapes_autoencoder_keeps_what_the_detector_reads():
    # docs/learning-study.md section 13: 99.2% strict on 1,000 val reconstructions (renders: 100%)
    ae = load_autoencoder("checkpoints/shapes-ae", image_size=(32, 32))
    world = get_world("shapes")
    metas = world.load_prompts(world.prompt_file("val"))[:96]
    images = torch.stack([world.render(m, i) for i, m in enumerate(metas)])
    with torch.no_grad():
        recon = ae.decode_latents(ae.encode_latents(images))
    assert ae.latent_shape == (4, 8, 8) and F.mse_loss(recon, images).item() < 5e-4
    strict = world.evaluate(recon, metas)["overall/strict"]
    assert strict >= 0.95, strict
