"""The algorithm as a composition: presets and explicit parts (algorithms.py), refused combinations,
the PPO update's CFG gradient, the public advantage hook, and the objectives in the trainer."""

import json

import pytest
import torch

from vgpo.config import from_dict
from vgpo.errors import VgpoError
from vgpo.models.tiny import TinyFlowModel
from vgpo.sampling import sde_step
from vgpo.train import TrainConfig, TrainHooks, train
from vgpo.train.algorithms import PRESETS, Parts, describe
from vgpo.train.losses import ppo_clip_loss


def _cfg(tmp_path, ckpt, **kw):
    base = dict(out=str(tmp_path / "run"), checkpoint=str(ckpt), reward="brightness", epochs=1,
                prompts_per_epoch=2, group_size=4, sample_batch_size=8, train_batch_size=4,
                gradient_accumulation=2, num_steps=4, guidance_scale=2.0, lr=1e-3, clip_range=0.2,
                eval_every=0, eval_base=False, eval_num_steps=2, eval_images_per_prompt=1, eval_limit=2,
                save_every=1, ema_decay=0.0, threads=1)
    base.update(kw)
    return from_dict(TrainConfig, base)


def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


# --- presets and explicit parts ---------------------------------------------------------------------
@pytest.mark.parametrize("algorithm, parts", [
    ("grpo", Parts("sde", "ppo", False, False, True)),
    ("vgpo", Parts("sde", "ppo", True, True, False)),
    ("tcrm", Parts("sde", "ppo", True, False, False)),
    ("adae", Parts("sde", "ppo", False, True, False)),
    ("nft", Parts("ode", "nft", False, False, False)),
    ("awm", Parts("ode", "awm", False, False, False)),
])
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


@pytest.mark.parametrize("data, message", [
    ({"algorithm": "grpo", "sampler": "ode"}, "objective: ppo needs the step log-probs"),
    ({"algorithm": "nft", "sde_steps": 2}, "sde_steps: 2 with sampler ode"),
    ({"algorithm": "awm", "shared_init_noise": True}, "shared_init_noise"),
    ({"algorithm": "grpo", "noise_level": 0.0}, "noise_level: expected > 0 for sampler sde"),
    ({"sampler": "cps", "noise_level": 1.5, "timestep_fraction": 0.5}, "noise_level: expected in \\(0, 1\\] for sampler cps"),
    ({"sampler": "cps", "noise_level": 0.8, "timestep_fraction": 1.0}, "timestep_fraction: sampler cps's last step"),
    ({"objective": "dpo"}, "objective"),
    ({"sampler": "euler"}, "sampler"),
    ({"fm_advantage_interp": "cubic"}, "fm_advantage_interp"),
    ({"nft_beta": 0.0}, "nft_beta"),
    ({"old_policy_decay_max": 1.0}, "old_policy_decay_max"),
])
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
    model = TinyFlowModel.load(tiny_checkpoint)
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
    assert all(m["losses/grad_norm"] == 0.0 and m["adv/abs_mean"] == 0.0 for m in _metrics(out) if "losses/grad_norm" in m)
