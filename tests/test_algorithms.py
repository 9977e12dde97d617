"""The algorithm as a composition: presets and explicit parts (algorithms.py), refused combinations,
the PPO update's CFG gradient, the public advantage hook, and the objectives in the trainer."""

import dataclasses
import json

import pytest
import torch

from conftest import TINY_RUN
from vgpo.config import from_dict
from vgpo.errors import VgpoError
from vgpo.models.tiny import TinyFlowModel
from vgpo.sampling import sde_step
from vgpo.train import TrainConfig, TrainHooks, train
from vgpo.train.algorithms import PRESETS, Parts, describe
from vgpo.train.losses import ppo_clip_loss


def _cfg(tmp_path, ckpt, **kw):
    base = dict(TINY_RUN, out=str(tmp_path / "run"), checkpoint=str(ckpt), epochs=1, save_every=1, ema_decay=0.0)
    base.update(kw)
    return from_dict(TrainConfig, base)


def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


# --- presets and explicit parts ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "algorithm, parts",
    [
        ("grpo", Parts("sde", "ppo", False, False, True)),
        ("vgpo", Parts("sde", "ppo", True, True, False)),
        ("tcrm", Parts("sde", "ppo", True, False, False)),
        ("adae", Parts("sde", "ppo", False, True, False)),
        ("nft", Parts("ode", "nft", False, False, False)),
        ("awm", Parts("ode", "awm", False, False, False)),
    ],
)
def test_presets_name_their_parts(algorithm, parts):
    cfg = TrainConfig(algorithm=algorithm)
    assert cfg.parts == parts == PRESETS[algorithm]
    assert (cfg.dense_rewards, cfg.absolute_signal, cfg.drops_zero_std) == (parts.tcrm, parts.adae, parts.drop_zero_std)


def test_explicit_fields_override_only_their_part():
    cfg = TrainConfig(algorithm="vgpo", objective="nft")
    assert cfg.parts == Parts("sde", "nft", True, True, False) and describe(cfg.parts) == "sde+nft+tcrm+adae"
    cfg = TrainConfig(algorithm="nft", tcrm=True, adae=True, sampler="cps", noise_level=0.8)
    assert cfg.parts == Parts("cps", "nft", True, True, False)
    assert TrainConfig(algorithm="grpo", drop_zero_std_groups=False).drops_zero_std is False
    assert TrainConfig(algorithm="vgpo", adae=False).parts == PRESETS["tcrm"]
    # The ODE sampler draws without noise whatever noise_level says; a window keeps the SDE's level.
    assert TrainConfig(algorithm="nft", num_steps=4).noise_levels == [0.0] * 4
    assert TrainConfig(sampler="cps", noise_level=0.8, num_steps=4, sde_steps=2).noise_levels == [0.8, 0.8, 0.0, 0.0]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"algorithm": "grpo", "sampler": "ode"}, "objective: ppo needs the step log-probs"),
        ({"algorithm": "nft", "sde_steps": 2}, "sde_steps: 2 with sampler ode"),
        ({"algorithm": "awm", "shared_init_noise": True}, "shared_init_noise"),
        ({"algorithm": "grpo", "noise_level": 0.0}, "noise_level: expected > 0 for sampler sde"),
        (
            {"sampler": "cps", "noise_level": 1.5, "timestep_fraction": 0.5},
            "noise_level: expected in \\(0, 1\\] for sampler cps",
        ),
        (
            {"sampler": "cps", "noise_level": 0.8, "timestep_fraction": 1.0},
            "timestep_fraction: sampler cps's last step",
        ),
        ({"objective": "dpo"}, "objective"),
        ({"sampler": "euler"}, "sampler"),
        ({"fm_advantage_interp": "cubic"}, "fm_advantage_interp"),
        ({"nft_beta": 0.0}, "nft_beta"),
        ({"old_policy_decay_max": 1.0}, "old_policy_decay_max"),
        ({"fm_points_per_pass": 0}, "fm_points_per_pass: expected >= 1"),
    ],
)
def test_impossible_combinations_are_refused_in_one_line(data, message):
    with pytest.raises(VgpoError, match=message) as info:
        from_dict(TrainConfig, data)
    assert "\n" not in str(info.value)


def test_cps_trains_when_its_deterministic_last_step_is_not_trained():
    cfg = TrainConfig(sampler="cps", noise_level=0.8, num_steps=10, sde_steps=5, timestep_fraction=1.0)
    assert cfg.trained_steps == 5
    assert TrainConfig(algorithm="nft", sampler="cps", noise_level=0.8, timestep_fraction=1.0).trained_steps == 10


# --- CFG gradient of the PPO update ------------------------------------------------------------------
@pytest.mark.parametrize("uncond_grad", [False, True])
def test_ppo_cfg_gradient_matches_a_hand_written_reference(tmp_path, tiny_checkpoint, uncond_grad):
    """Default: the unconditional branch of the recomputed guided velocity is detached (Flow-GRPO), so the
    gradient is that of g*v_cond alone; cfg_uncond_grad: the exact gradient through both branches."""
    from vgpo.train.objectives import PPO, MicroBatch, UpdateContext
    from vgpo.train.trainer import sample_epoch
    from vgpo.worlds import get_world

    cfg = _cfg(tmp_path, tiny_checkpoint, guidance_scale=3.0, cfg_uncond_grad=uncond_grad)
    model = TinyFlowModel.load(tiny_checkpoint, precision="fp32")  # an exact reference
    prompts = get_world("shapes").load_prompts(get_world("shapes").train_file)
    batch = sample_epoch(cfg, model, prompts, 0, model.schedule(cfg.num_steps))
    idx = torch.arange(3)
    cond = model.encode_prompts([batch.metadata[i]["prompt"] for i in idx])
    uncond = model.negative_condition(3)
    adv = torch.tensor([[1.0] * 4, [-0.5] * 4, [2.0] * 4])
    params = model.trainable_parameters()

    term = next(PPO().terms(UpdateContext(cfg, model, batch, 0, 0, None), MicroBatch(idx, cond, uncond, adv)))
    got = torch.autograd.grad(term.loss.sum(), params, allow_unused=True)

    traj, sigmas, g = batch.traj, batch.traj.sigmas, cfg.guidance_scale
    x, prev = traj.states[idx, 0], traj.states[idx, 1]
    s = sigmas[0].expand(3)

    def reference(detach: bool):
        v_cond = model.velocity(x, s, cond).float()
        v_uncond = model.velocity(x, s, uncond).float()
        if detach:
            v_uncond = v_uncond.detach()
        v = v_uncond + g * (v_cond - v_uncond)
        out = sde_step(x, v, sigmas, 0, cfg.noise_level, prev_sample=prev)
        loss, _ = ppo_clip_loss(out.log_prob, traj.log_probs[idx, 0], adv[:, 0], cfg.clip_range)
        return torch.autograd.grad(loss.sum(), params, allow_unused=True)

    want, other = reference(not uncond_grad), reference(uncond_grad)
    pairs = [(a, b, c) for a, b, c in zip(got, want, other) if b is not None]
    assert all(a is not None for a, _, _ in pairs) and pairs
    scale = max(b.abs().max().item() for _, b, _ in pairs)
    for a, b, _ in pairs:  # float noise of a batched vs a separate forward, at the gradients' scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)
    # The two choices give clearly different gradients, so the comparison above can fail.
    assert max((b - c).abs().max().item() for _, b, c in pairs) > 1e-2 * scale


def test_detached_and_exact_cfg_gradients_differ(tmp_path, tiny_checkpoint):
    grads = []
    for uncond_grad in (False, True):
        out = train(_cfg(tmp_path / str(uncond_grad), tiny_checkpoint, cfg_uncond_grad=uncond_grad))
        grads.append(_metrics(out)[-1]["losses/grad_norm"])
    assert grads[0] > 0 and grads[1] > 0 and abs(grads[0] - grads[1]) > 1e-6 * grads[1]


# --- the public advantage hook --------------------------------------------------------------------------
def test_on_advantages_hook_sees_every_epoch_and_its_result_is_trained(tmp_path, tiny_checkpoint):
    seen = []

    def zero(epoch, adv, omega):
        seen.append((epoch, tuple(adv.shape), tuple(omega.shape)))
        return torch.zeros_like(adv), omega

    out = train(_cfg(tmp_path, tiny_checkpoint, epochs=2, algorithm="vgpo"), hooks=TrainHooks(on_advantages=zero))
    assert seen == [(0, (8, 4), (8, 4)), (1, (8, 4), (8, 4))]
    # Zero advantages and no KL: a PPO loss with no gradient, and nothing logged as the advantage.
    assert all(
        m["losses/grad_norm"] == 0.0 and m["adv/abs_mean"] == 0.0 for m in _metrics(out) if "losses/grad_norm" in m
    )


# --- the flow-matching objectives in the trainer -----------------------------------------------------
FM = dict(guidance_scale=1.0, eval_guidance_scale=2.0)


@pytest.mark.parametrize(
    "extra",
    [
        dict(algorithm="nft"),
        dict(algorithm="awm"),
        dict(algorithm="nft", tcrm=True, adae=True, fm_timesteps=3, beta=0.01),
        dict(algorithm="awm", sampler="cps", noise_level=0.8, tcrm=True, adae=True),
    ],
    ids=["nft", "awm", "nft-tcrm-adae", "awm-cps-tcrm-adae"],
)
def test_flow_matching_objectives_train(tmp_path, tiny_checkpoint, extra):
    from safetensors.torch import load_file

    out = train(_cfg(tmp_path, tiny_checkpoint, epochs=2, **FM, **extra))
    ms = [m for m in _metrics(out) if "losses/grad_norm" in m]
    assert len(ms) == 2 and all(m["losses/grad_norm"] > 0 and m["charts/optimizer_steps"] == 1 for m in ms)
    assert all(torch.isfinite(torch.tensor(m["losses/policy"])) for m in ms)
    assert [m["charts/old_policy_decay"] for m in ms] == pytest.approx([0.001, 0.002])  # DiffusionNFT's ramp
    assert ms[0]["perf/reward_images"] == (8 * 4 if extra.get("tcrm") else 8)
    trained = load_file(str(out / "checkpoint" / "trainable.safetensors"))
    base = TinyFlowModel.load(tiny_checkpoint).trainable_state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in trained)
    assert (out / "checkpoint" / "old_policy.safetensors").is_file()


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_a_neutral_sample_gives_no_gradient_at_the_old_policy(tmp_path, tiny_checkpoint, algorithm):
    """Zero advantages (NFT: optimality 1/2) and no KL: at the old policy (the first micro-batches of an
    epoch, before any step) the objective's gradient vanishes."""
    zero = TrainHooks(on_advantages=lambda epoch, adv, omega: (torch.zeros_like(adv), omega))
    out = train(_cfg(tmp_path, tiny_checkpoint, algorithm=algorithm, **FM), hooks=zero)
    (m,) = [m for m in _metrics(out) if "losses/grad_norm" in m]
    assert m["losses/grad_norm"] < 1e-9


def test_flow_matching_batch_8_x_accumulation_1_equals_batch_2_x_accumulation_4(tmp_path, tiny_checkpoint):
    # fp32: in bf16 the gradient's sums depend on how the batch is split (about 1e-4 relative)
    kw = dict(
        algorithm="nft", tcrm=True, max_grad_norm=1e6, adam_eps=1.0, lr=1.0, model_options={"precision": "fp32"}, **FM
    )
    a = train(_cfg(tmp_path / "a", tiny_checkpoint, train_batch_size=8, gradient_accumulation=1, **kw))
    b = train(_cfg(tmp_path / "b", tiny_checkpoint, train_batch_size=2, gradient_accumulation=4, **kw))
    ga, gb = _metrics(a)[-1]["losses/grad_norm"], _metrics(b)[-1]["losses/grad_norm"]
    assert ga > 0 and ga == pytest.approx(gb, rel=1e-5)


def test_flow_matching_resume_is_bit_identical(tmp_path, tiny_checkpoint):
    """The old policy (its weights and step count) is saved with the checkpoint and restored."""
    from safetensors.torch import load_file

    kw = dict(algorithm="nft", epochs=3, gradient_accumulation=1, old_policy_decay_rate=0.3, **FM)
    full = train(_cfg(tmp_path / "full", tiny_checkpoint, **kw))
    train(_cfg(tmp_path / "part", tiny_checkpoint, **{**kw, "epochs": 2}))
    resumed = train(_cfg(tmp_path / "part", tiny_checkpoint, **kw), resume=True)
    for name in ("checkpoint/trainable.safetensors", "checkpoint/old_policy.safetensors"):
        wf, wr = load_file(str(full / name)), load_file(str(resumed / name))
        assert wf.keys() == wr.keys() and all(torch.equal(wf[k], wr[k]) for k in wf)
    assert _metrics(resumed)[-1] == {
        **_metrics(full)[-1],
        **{k: v for k, v in _metrics(resumed)[-1].items() if k.startswith(("time/", "charts/samples", "perf/peak"))},
    }


def test_old_policy_lags_and_swaps_in_and_out():
    from vgpo.train.old_policy import OldPolicy, decay_at

    assert [decay_at(s, 0.001, 0.5, 0) for s in (0, 1, 400, 600)] == pytest.approx([0.0, 0.001, 0.4, 0.5])
    assert decay_at(74, 0.0075, 0.999, 75) == 0.0 and decay_at(85, 0.0075, 0.999, 75) == pytest.approx(0.075)
    p = torch.nn.Parameter(torch.zeros(3))
    old = OldPolicy([p])
    with torch.no_grad():
        p.add_(1.0)
    assert old.step(2, rate=0.25, max_decay=0.9, flat=0) == pytest.approx(0.5)  # 2 steps: d = 0.5
    torch.testing.assert_close(old.weights[0], torch.full((3,), 0.5))
    with old.active():
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.5))
    torch.testing.assert_close(p.detach(), torch.ones(3))


def test_tcrm_advantage_at_the_training_time_is_the_interpolated_step_value(tmp_path, tiny_checkpoint):
    """NFT with TCRM: the optimality probability of each training point is that of the per-step
    advantages interpolated linearly in sigma at sigma = t (computed here by hand)."""
    from vgpo.train.objectives import NFT, MicroBatch, UpdateContext, training_times
    from vgpo.train.old_policy import OldPolicy
    from vgpo.train.trainer import sample_epoch
    from vgpo.worlds import get_world

    cfg = _cfg(tmp_path, tiny_checkpoint, algorithm="nft", tcrm=True, fm_timesteps=4, **FM)
    model = TinyFlowModel.load(tiny_checkpoint)
    prompts = get_world("shapes").load_prompts(get_world("shapes").train_file)
    batch = sample_epoch(cfg, model, prompts, 0, model.schedule(cfg.num_steps))
    idx = torch.tensor([1, 5])
    adv = torch.tensor([[4.0, 2.0, -1.0, 0.5], [-3.0, 0.0, 1.0, 2.0]])
    ctx = UpdateContext(cfg, model, batch, 0, 0, OldPolicy(model.trainable_parameters()))
    mb = MicroBatch(idx, model.encode_prompts([batch.metadata[i]["prompt"] for i in idx]), None, adv)
    rs = torch.stack([term.stats["r"] for term in NFT().terms(ctx, mb)], dim=1)  # (2, K)
    times, _ = training_times(cfg, batch.traj.sigmas, batch.sample_ids[idx], 0, 0, model.latent_shape)
    s = batch.traj.sigmas.tolist()
    for b in range(2):
        for k in range(4):
            t = times[b, k].item()
            assert s[cfg.trained_steps] <= t <= s[0]
            i = max(j for j in range(4) if s[j] >= t)  # the step interval [s_(i+1), s_i] holding t
            a = adv[b, i] if i == 3 else adv[b, i] + (s[i] - t) / (s[i] - s[i + 1]) * (adv[b, i + 1] - adv[b, i])
            assert rs[b, k].item() == pytest.approx(
                0.5 + 0.5 * max(-1.0, min(1.0, float(a) / cfg.adv_clip_max)), abs=1e-6
            )
    # The draws do not depend on which other samples share the micro-batch.
    alone, _ = training_times(cfg, batch.traj.sigmas, batch.sample_ids[idx[1:]], 0, 0, model.latent_shape)
    assert torch.equal(alone[0], times[1])


def test_awm_ratio_is_to_the_sampling_weights_and_its_penalty_to_the_old_policy(tmp_path, tiny_checkpoint):
    """AWM as its released code: at the weights that drew the samples its ratio is 1 however far the
    lagged old policy is, and the velocity penalty measures the distance to that old policy."""
    from vgpo.train.objectives import AWM, MicroBatch, UpdateContext
    from vgpo.train.old_policy import OldPolicy
    from vgpo.train.trainer import sample_epoch
    from vgpo.worlds import get_world

    cfg = _cfg(tmp_path, tiny_checkpoint, algorithm="awm", **FM)
    model = TinyFlowModel.load(tiny_checkpoint)
    prompts = get_world("shapes").load_prompts(get_world("shapes").train_file)
    batch = sample_epoch(cfg, model, prompts, 0, model.schedule(cfg.num_steps))
    params = model.trainable_parameters()
    old = OldPolicy(params)
    with torch.no_grad():
        for w in old.weights:
            w.add_(0.05 * torch.randn_like(w))
    ctx = UpdateContext(cfg, model, batch, 0, 0, old, [p.detach().clone() for p in params])
    idx = torch.arange(4)
    mb = MicroBatch(idx, model.encode_prompts([batch.metadata[i]["prompt"] for i in idx]), None, torch.ones(4, 4))
    terms = list(AWM().terms(ctx, mb))
    assert len(terms) == cfg.trained_steps
    assert all(t.ratio_dev.abs().max() < 1e-6 for t in terms)
    assert all((t.stats["old_kl"] > 0).all() and torch.allclose(t.stats["old_kl"], t.stats["old_dev"]) for t in terms)


def test_flow_matching_anchors_in_one_pass_are_each_training_points_old_velocity(tmp_path, tiny_checkpoint):
    """The old policy's velocities at a micro-batch's K training points come from one pass of K x B samples
    (objectives.py): each term's old_dev is the distance to the old velocity at its own (sample, time, noise),
    as K separate passes give it."""
    from vgpo.train.fm_losses import fm_interpolate, velocity_kl
    from vgpo.train.objectives import NFT, MicroBatch, UpdateContext, training_times
    from vgpo.train.old_policy import OldPolicy
    from vgpo.train.trainer import sample_epoch
    from vgpo.worlds import get_world

    cfg = _cfg(tmp_path, tiny_checkpoint, algorithm="nft", fm_timesteps=3, **FM)
    model = TinyFlowModel.load(tiny_checkpoint, precision="fp32")
    prompts = get_world("shapes").load_prompts(get_world("shapes").train_file)
    batch = sample_epoch(cfg, model, prompts, 0, model.schedule(cfg.num_steps))
    old = OldPolicy(model.trainable_parameters())
    with torch.no_grad():
        for w in old.weights:
            w.add_(0.05 * torch.randn_like(w))
    idx = torch.tensor([0, 3, 6])
    cond = model.encode_prompts([batch.metadata[i]["prompt"] for i in idx])
    terms = list(
        NFT().terms(UpdateContext(cfg, model, batch, 0, 0, old), MicroBatch(idx, cond, None, torch.ones(3, 4)))
    )
    times, noises = training_times(cfg, batch.traj.sigmas, batch.sample_ids[idx], 0, 0, model.latent_shape)
    x0 = batch.traj.final[idx].float()
    with torch.no_grad():
        for k, term in enumerate(terms):
            xt = fm_interpolate(x0, noises[:, k], times[:, k])
            v = model.velocity(xt, times[:, k], cond)
            with old.active():
                v_old = model.velocity(xt, times[:, k], cond)
            assert float(velocity_kl(v, v_old).min()) > 0
            torch.testing.assert_close(term.stats["old_dev"], velocity_kl(v, v_old), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("objective, beta", [("nft", 0.0), ("awm", 0.04)])
def test_points_per_pass_change_the_passes_not_the_loss(tmp_path, tiny_checkpoint, objective, beta):
    """fm_points_per_pass groups a micro-batch's training points into fewer, larger passes: the same rows, losses,
    statistics and gradient as one pass per point, up to float rounding (fp32 here), with or without the KL."""
    from vgpo.train.objectives import OBJECTIVES, MicroBatch, UpdateContext
    from vgpo.train.old_policy import OldPolicy
    from vgpo.train.trainer import sample_epoch
    from vgpo.worlds import get_world

    model = TinyFlowModel.load(tiny_checkpoint, precision="fp32")
    params = model.trainable_parameters()
    old = OldPolicy(params)
    with torch.no_grad():
        for w in old.weights:
            w.add_(0.05 * torch.randn_like(w))
    prompts = get_world("shapes").load_prompts(get_world("shapes").train_file)
    cfg = _cfg(tmp_path, tiny_checkpoint, algorithm=objective, fm_timesteps=5, beta=beta, **FM)
    batch = sample_epoch(cfg, model, prompts, 0, model.schedule(cfg.num_steps))
    idx = torch.tensor([0, 3, 6])
    cond = model.encode_prompts([batch.metadata[i]["prompt"] for i in idx])
    adv = torch.tensor([[1.5], [-0.5], [0.2]]).expand(3, cfg.trained_steps)
    results = {}
    for per_pass in (1, 2, 5):  # 5 points: passes of 1 x 5, 2 + 2 + 1, 5
        cfg = dataclasses.replace(cfg, fm_points_per_pass=per_pass)
        ctx = UpdateContext(cfg, model, batch, 0, 0, old, [p.detach().clone() for p in params])
        terms = list(OBJECTIVES[objective].terms(ctx, MicroBatch(idx, cond, None, adv)))
        assert len(terms) == -(-5 // per_pass) and sum(t.loss.numel() for t in terms) == 5 * 3
        model_grads = torch.autograd.grad(sum(t.loss.sum() for t in terms), params, allow_unused=True)
        stats = {k: torch.cat([t.stats[k] for t in terms]) for k in terms[0].stats}
        results[per_pass] = torch.cat([t.loss.detach() for t in terms]), stats, model_grads
    loss_1, stats_1, grads_1 = results[1]
    assert sum(g is not None and float(g.abs().max()) > 0 for g in grads_1) > len(params) // 2
    scale = max(float(g.abs().max()) for g in grads_1 if g is not None)  # some gradients are rounding noise only
    for per_pass in (2, 5):
        loss, stats, grads = results[per_pass]
        torch.testing.assert_close(loss, loss_1, rtol=1e-4, atol=1e-6)
        for k in stats_1:
            torch.testing.assert_close(stats[k], stats_1[k], rtol=1e-4, atol=1e-6)
        for g, g_1 in zip(grads, grads_1):
            if g_1 is None:
                assert g is None
                continue
            torch.testing.assert_close(g, g_1, rtol=1e-3, atol=1e-5 * scale)
