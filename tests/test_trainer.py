"""Trainer invariants on a small random tiny model (fast, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_RUN
from vgpo.config import from_dict
from vgpo.errors import VgpoError
from vgpo.models.tiny import TinyFlowModel
from vgpo.train import TrainConfig, train


def _cfg(tmp_path, ckpt, **kw):
    base = dict(
        TINY_RUN, out=str(tmp_path / "run"), checkpoint=str(ckpt), epochs=1, eval_base=True, save_every=1, ema_decay=0.0
    )
    base.update(kw)
    return from_dict(TrainConfig, base)


def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    return load_file(str(out / "checkpoint" / "trainable.safetensors"))


@pytest.mark.parametrize("algorithm", ["grpo", "vgpo", "tcrm", "adae"])
def test_first_inner_ratio_is_one_and_metrics_are_written(tmp_path, tiny_checkpoint, algorithm):
    out = train(_cfg(tmp_path, tiny_checkpoint, algorithm=algorithm, beta=0.04))
    (m,) = [r for r in _metrics(out) if r["epoch"] == 1]
    assert m["losses/ratio_dev_first"] < 1e-5
    assert m["losses/kl"] >= 0 and m["charts/samples_per_s"] > 0
    assert (out / "reward.png").is_file() and (out / "eval" / "epoch_0001.json").is_file()
    if algorithm in ("vgpo", "tcrm"):
        assert "tcrm/q_0" in m and "tcrm/omega_3" in m and m["perf/reward_images"] == 8 * 4
    else:
        assert "tcrm/q_0" not in m and m["perf/reward_images"] == 8


def test_batch_8_x_accumulation_1_equals_batch_2_x_accumulation_4(tmp_path, tiny_checkpoint):
    # One optimizer step of 8 samples either way. Adam's first step is lr*g/(|g|+eps): with the usual
    # eps it is blind to the gradient's scale and amplifies float noise in near-zero gradients, so
    # eps = 1 makes the update ~lr*g (scale-sensitive, smooth); the pre-clip gradient norm is compared too.
    # fp32: in bf16 the summation order of the gradients follows the batch (measured 1e-4 relative).
    kw = dict(max_grad_norm=1e6, adam_eps=1.0, lr=1.0, model_options={"precision": "fp32"})
    a = train(_cfg(tmp_path / "a", tiny_checkpoint, train_batch_size=8, gradient_accumulation=1, **kw))
    b = train(_cfg(tmp_path / "b", tiny_checkpoint, train_batch_size=2, gradient_accumulation=4, **kw))
    ga, gb = _metrics(a)[-1]["losses/grad_norm"], _metrics(b)[-1]["losses/grad_norm"]
    assert ga > 0 and ga == pytest.approx(gb, rel=1e-5)
    assert _metrics(a)[-1]["charts/optimizer_steps"] == _metrics(b)[-1]["charts/optimizer_steps"] == 1
    wa, wb = _weights(a), _weights(b)
    base = TinyFlowModel.load(tiny_checkpoint).trainable_state_dict()
    assert any(not torch.equal(wa[k], base[k]) for k in wa)
    scale = max(float((wa[k] - base[k]).abs().max()) for k in wa)  # noise follows the largest change, not each
    for k in wa:
        torch.testing.assert_close(wa[k] - base[k], wb[k] - base[k], rtol=1e-4, atol=1e-4 * scale)


def test_sample_batch_size_does_not_change_samples(tmp_path, tiny_checkpoint):
    a = train(_cfg(tmp_path / "a", tiny_checkpoint, sample_batch_size=8))
    b = train(_cfg(tmp_path / "b", tiny_checkpoint, sample_batch_size=3))
    ma, mb = _metrics(a)[-1], _metrics(b)[-1]
    assert ma["reward/mean"] == pytest.approx(mb["reward/mean"], abs=1e-5)


@pytest.mark.parametrize("algorithm", ["grpo", "vgpo"])
def test_brightness_reward_rises_and_every_parameter_changes(tmp_path, tiny_checkpoint, algorithm):
    out = train(
        _cfg(
            tmp_path,
            tiny_checkpoint,
            algorithm=algorithm,
            epochs=6,
            prompts_per_epoch=4,
            lr=3e-3,
            clip_range=0.5,
            save_every=6,
        )
    )
    rewards = [m["reward/mean"] for m in _metrics(out) if "reward/mean" in m]
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.02, rewards
    trained = _weights(out)
    model = TinyFlowModel.load(tiny_checkpoint)
    names = {id(p) for p in model.trainable_parameters()}
    base = {
        k: v
        for (k, v), p in zip(
            model.net.state_dict(keep_vars=True).items(), model.net.state_dict(keep_vars=True).values()
        )
        if id(p) in names
    }
    unchanged = [k for k, v in base.items() if torch.equal(v.detach(), trained[k])]
    assert not unchanged, unchanged
    text = [k for k in trained if k.startswith("text.")]
    assert text and all(torch.equal(trained[k], model.net.state_dict()[k]) for k in text)  # frozen encoder


def test_resume_is_bit_identical(tmp_path, tiny_checkpoint):
    kw = dict(algorithm="vgpo", ema_decay=0.9, epochs=3)
    full = train(_cfg(tmp_path / "full", tiny_checkpoint, **kw))
    part = _cfg(tmp_path / "part", tiny_checkpoint, **{**kw, "epochs": 2})
    train(part)
    resumed = train(_cfg(tmp_path / "part", tiny_checkpoint, **kw), resume=True)
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    ef = load_file(str(full / "checkpoint" / "ema.safetensors"))
    er = load_file(str(resumed / "checkpoint" / "ema.safetensors"))
    assert all(torch.equal(ef[k], er[k]) for k in ef)
    assert [m["epoch"] for m in _metrics(resumed)] == [0, 1, 2, 3]  # 0: the base model's evaluation
    assert _metrics(resumed)[-1]["reward/mean"] == _metrics(full)[-1]["reward/mean"]


def test_resume_without_checkpoint_names_the_folder(tmp_path, tiny_checkpoint):
    with pytest.raises(VgpoError, match="no training checkpoint"):
        train(_cfg(tmp_path, tiny_checkpoint), resume=True)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"lerning_rate": 1.0}, "lerning_rate"),
        ({"lr": "fast"}, "lr"),
        ({"group_size": 1}, "group_size"),
        ({"algorithm": "ppo"}, "algorithm"),
        ({"timestep_fraction": 0.0}, "timestep_fraction"),
        ({"clip_range": -1.0}, "clip_range"),
        ({"eval_guidance_scale": 0.5}, "eval_guidance_scale"),
        ({"old_log_probs": "fresh"}, "old_log_probs"),
    ],
)
def test_config_errors_name_the_field(data, field):
    with pytest.raises(VgpoError, match=field):
        from_dict(TrainConfig, data)


def test_eval_guidance_scale_sets_the_held_out_cfg_only(tmp_path, tiny_checkpoint, monkeypatch):
    """Training without CFG (guidance_scale 1) and judging with it: rollouts use 1, evaluation 3."""
    from vgpo.train import trainer

    seen, rolled = [], []
    real_eval, real_rollout = trainer.evaluate_world, trainer.rollout
    monkeypatch.setattr(
        trainer, "evaluate_world", lambda *a, **k: seen.append(k["guidance_scale"]) or real_eval(*a, **k)
    )
    monkeypatch.setattr(trainer, "rollout", lambda *a, **k: rolled.append(a[5]) or real_rollout(*a, **k))
    cfg = _cfg(tmp_path, tiny_checkpoint, guidance_scale=1.0, eval_guidance_scale=3.0, epochs=1)
    assert cfg.eval_guidance == 3.0 and _cfg(tmp_path, tiny_checkpoint).eval_guidance == 2.0  # 0: guidance_scale
    train(cfg)
    assert set(seen) == {3.0} and set(rolled) == {1.0}


def test_load_trained_model_uses_ema_weights(tmp_path, tiny_checkpoint):
    from vgpo.train.trainer import load_trained_model

    out = train(_cfg(tmp_path, tiny_checkpoint, ema_decay=0.5, epochs=2))
    model, cfg, epoch = load_trained_model(out)
    assert epoch == 2 and cfg.ema_decay == 0.5
    ema = load_file(str(out / "checkpoint" / "ema.safetensors"))
    for i, p in enumerate(model.trainable_parameters()):
        assert torch.equal(p.detach(), ema[f"ema.{i}"])


def test_sde_window_trains_only_its_steps(tmp_path, tiny_checkpoint):
    """sde_steps=1 (Flow-GRPO-Fast): one SDE step, the ODE after; the update trains that step alone, its
    PPO ratio starts at 1, and the trained-step count is the window whatever timestep_fraction says."""
    cfg = _cfg(tmp_path, tiny_checkpoint, algorithm="vgpo", sde_steps=1, timestep_fraction=1.0, epochs=2)
    assert cfg.trained_steps == 1 and cfg.noise_levels == [cfg.noise_level, 0.0, 0.0, 0.0]
    out = train(cfg)
    (m,) = [r for r in _metrics(out) if r["epoch"] == 1]
    assert m["losses/ratio_dev_first"] < 1e-5 and m["losses/grad_norm"] > 0
    with pytest.raises(VgpoError, match="sde_steps"):
        _cfg(tmp_path, tiny_checkpoint, sde_steps=5)  # num_steps is 4


def test_shared_init_noise_gives_a_group_one_start(tmp_path, tiny_checkpoint):
    """shared_init_noise: a group's samples start from one noise draw (different groups do not) and part
    at the first SDE step; off, every sample has its own start."""
    from vgpo.train.trainer import sample_epoch
    from vgpo.worlds import get_world

    world = get_world("shapes")
    prompts = world.load_prompts(world.train_file)
    model = TinyFlowModel.load(tiny_checkpoint)
    for shared in (True, False):
        cfg = _cfg(tmp_path, tiny_checkpoint, shared_init_noise=shared, sample_batch_size=3)
        states = sample_epoch(cfg, model, prompts, 0, model.schedule(cfg.num_steps)).traj.states  # 2 groups of 4
        same_start = [torch.equal(states[0, 0], states[k, 0]) for k in range(1, 4)]
        assert same_start == [shared] * 3
        assert not torch.equal(states[0, 0], states[4, 0])
        assert not torch.equal(states[0, 1], states[1, 1])


def test_text_world_trains_on_ocr_with_sparse_tcrm(tmp_path, tiny_text_checkpoint):
    """The text world through the same trainer: OCR-scored projections every 2nd step (and the last),
    the world's training words as prompts, its OCR table as the evaluation."""
    pytest.importorskip("rapidocr")
    from vgpo.train.advantages import scored_steps

    out = train(_cfg(tmp_path, tiny_text_checkpoint, world="text", reward="ocr", algorithm="vgpo", tcrm_every=2))
    (m,) = [r for r in _metrics(out) if r["epoch"] == 1]
    assert m["perf/reward_images"] == 8 * len(scored_steps(4, 2)) == 8 * 3
    assert m["losses/ratio_dev_first"] < 1e-5
    assert 0.0 <= m["reward/mean"] <= 1.0 and torch.isfinite(torch.tensor(m["losses/policy"]))
    table = json.loads((out / "eval" / "epoch_0001.json").read_text())
    assert table["ocr/count"] == 2 and 0.0 <= table["ocr/accuracy"] <= 1.0 and "ocr/exact" in table


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recomputed_old_log_probs_are_the_update_forward_bits(tmp_path, tiny_checkpoint, precision):
    """`old_log_probs: recompute` rests on this: in the update's own micro-batch, a no-grad pass gives the
    same bits as the update's forward with the graph on, so the ratio is exactly 1 before the weights move
    (the rollout's log-probs, drawn at another batch size, are off by up to 1e-3 in bf16 on an AMX CPU:
    tests/test_precision.py)."""
    from vgpo.train.objectives import MicroBatch, UpdateContext, get_objective
    from vgpo.train.trainer import sample_epoch

    cfg = _cfg(tmp_path, tiny_checkpoint, model_options={"precision": precision})
    model = TinyFlowModel.load(tiny_checkpoint, precision=precision)
    prompts = [{"prompt": p} for p in ("a red circle", "two blue squares")]
    batch = sample_epoch(cfg, model, prompts, 1, model.schedule(cfg.num_steps))
    ppo, old = get_objective("ppo"), batch.traj.log_probs.clone()
    ctx = UpdateContext(cfg, model, batch, 1, 0, None, old_log_probs=old)
    worst = []
    for idx in torch.arange(len(batch.metadata)).split(2):
        cond = model.encode_prompts([batch.metadata[i]["prompt"] for i in idx])
        mb = MicroBatch(idx, cond, model.negative_condition(2), torch.ones(2, cfg.num_steps))
        with torch.no_grad():
            old[idx, : cfg.trained_steps] = ppo.log_probs(ctx, mb)
        worst += [term.ratio_dev.max().item() for term in ppo.terms(ctx, mb)]
    assert len(worst) == len(batch.metadata) // 2 * cfg.trained_steps and max(worst) == 0.0


def test_recompute_trains_as_the_rollout_log_probs_do_in_fp32(tmp_path, tiny_checkpoint):
    # In float32 the rollout's log-probs agree with the update's to ~1e-7, so recomputing them must not change
    # training: four optimizer steps an epoch (batch 2, no accumulation), whose later steps read the pre-pass's
    # values and whose ratios move away from 1 as the weights do.
    # Adam with eps 1 (update ~ lr * g), as in the accumulation test: the usual eps would amplify float noise
    # in near-zero gradients.
    kw = dict(train_batch_size=2, gradient_accumulation=1, epochs=2, adam_eps=1.0, lr=1.0)
    kw.update(max_grad_norm=1e6, model_options={"precision": "fp32"})
    a = train(_cfg(tmp_path / "a", tiny_checkpoint, old_log_probs="rollout", **kw))
    b = train(_cfg(tmp_path / "b", tiny_checkpoint, old_log_probs="recompute", **kw))
    ma, mb = _metrics(a)[-1], _metrics(b)[-1]
    assert ma["charts/optimizer_steps"] == 4 and mb["losses/ratio_dev_first"] == 0.0
    assert "losses/rollout_ratio_dev" not in ma and 0.0 <= mb["losses/rollout_ratio_dev"] < 1e-5
    assert ma["losses/approx_kl"] > 1e-9 and ma["losses/approx_kl"] == pytest.approx(mb["losses/approx_kl"], rel=1e-3)
    wa, wb = _weights(a), _weights(b)
    base = TinyFlowModel.load(tiny_checkpoint).trainable_state_dict()
    scale = max(float((wa[k] - base[k]).abs().max()) for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k] - base[k], wb[k] - base[k], rtol=1e-4, atol=1e-4 * scale)
