"""End-to-end VGPO training of the SD3 and FLUX adapters (LoRA) with ``vgpo.train.train`` on CPU.

The tiny random pipelines of ``_tiny_pipelines`` are saved with ``save_pretrained`` and loaded back by
the trainer through ``model: sd3|flux`` + ``checkpoint: <folder>``, exactly as a real checkpoint would
be; prompts come from a small file read by the ``pickscore`` prompt-file world. Per model, one module
fixture trains 2 epochs straight, 1 epoch, then resumes that run to 2; the tests read those runs.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from _tiny_pipelines import (  # noqa: E402
    MAX_TOKENS,
    RESOLUTION,
    clip_model_and_processor,
    flux_pipeline,
    one_torch_thread,  # noqa: F401
    sd3_pipeline,
)
from vgpo.config import from_dict  # noqa: E402
from vgpo.models import load_model  # noqa: E402
from vgpo.train import TrainConfig, train  # noqa: E402

PROMPTS = ["a red cat", "two dogs", "a blue cube", "green tree"]
PIPELINES = {"sd3": sd3_pipeline, "flux": flux_pipeline}


@pytest.fixture(scope="module", autouse=True)
def quiet_logs():
    """The 16-token tiny tokenizers truncate every prompt; silence the per-call warnings."""
    import diffusers
    import transformers

    levels = transformers.logging.get_verbosity(), diffusers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(levels[0])
    diffusers.logging.set_verbosity(levels[1])


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def model_options(kind: str) -> dict:
    opts = {
        "resolution": RESOLUTION,
        "local_files_only": True,
        "max_sequence_length": MAX_TOKENS,
        "lora": {"rank": 2, "alpha": 4},
    }
    if kind == "flux":
        opts["guidance_scale"] = 3.5  # FLUX-dev's embedded guidance; no CFG (negative_condition is None)
    return opts


def make_cfg(out, kind, ckpt, prompts, **kw):
    data = dict(
        out=str(out),
        model=kind,
        checkpoint=str(ckpt),
        model_options=model_options(kind),
        world="pickscore",
        train_prompts=str(prompts),
        test_prompts=str(prompts),
        reward="brightness",
        algorithm="vgpo",
        epochs=2,
        prompts_per_epoch=2,
        group_size=2,
        sample_batch_size=4,
        train_batch_size=4,
        gradient_accumulation=1,
        num_steps=2,
        guidance_scale=2.0,
        lr=1e-2,
        clip_range=0.2,
        beta=0.04,
        ema_decay=0.5,
        eval_every=0,
        eval_num_steps=1,
        eval_images_per_prompt=1,
        eval_limit=1,
        save_every=1,
        threads=1,
    )
    data.update(kw)
    return from_dict(TrainConfig, data)


def metrics(out) -> dict[int, dict]:
    return {m["epoch"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def weights(ckpt_dir, name="trainable.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(ckpt_dir / name))


@pytest.fixture(scope="module", params=["sd3", "flux"])
def runs(request, tmp_path_factory, prompt_file):
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    ckpt = root / "pipeline"
    PIPELINES[kind]().save_pretrained(ckpt)
    straight = train(make_cfg(root / "straight", kind, ckpt, prompt_file))
    part = train(make_cfg(root / "part", kind, ckpt, prompt_file, epochs=1))
    shutil.copytree(part / "checkpoint", root / "epoch1")
    resumed = train(make_cfg(root / "part", kind, ckpt, prompt_file), resume=True)
    return dict(kind=kind, ckpt=ckpt, straight=straight, resumed=resumed, epoch1=root / "epoch1")


# LoRA layers whose output cannot reach the velocity: in SD3's last block (context_pre_only) the text
# stream's query only feeds the discarded text output, so its gradient is exactly zero.
NO_GRADIENT = {"sd3": ("transformer_blocks.1.attn.add_q_proj.",), "flux": ()}


def test_lora_weights_change_and_only_lora_is_saved(runs):
    w1, w2 = weights(runs["epoch1"]), weights(runs["straight"] / "checkpoint")
    assert w1 and all(".lora_A." in k or ".lora_B." in k for k in w1)
    dead = NO_GRADIENT[runs["kind"]]
    # PEFT starts B at zero: the first update moves every B; from then on every A moves too.
    assert all(w1[k].abs().max() > 0 for k in w1 if ".lora_B." in k and not k.startswith(dead))
    unchanged = [k for k in w2 if torch.equal(w1[k], w2[k])]
    assert unchanged == [k for k in w2 if k.startswith(dead)], unchanged


def test_first_inner_step_ratio_is_one(runs):
    m = metrics(runs["straight"])
    for epoch in (1, 2):
        assert m[epoch]["losses/ratio_dev_first"] < 1e-5, m[epoch]
        assert m[epoch]["charts/optimizer_steps"] == 1
        assert "tcrm/q_0" in m[epoch] and m[epoch]["perf/reward_images"] == 4 * 2  # VGPO: projections scored


def test_kl_against_the_adapter_disabled_reference(runs):
    m = metrics(runs["straight"])
    # Epoch 1's single update is computed before any step: the policy is the reference (LoRA B = 0).
    assert m[1]["losses/kl"] < 1e-12
    assert m[2]["losses/kl"] > 0  # the trained adapter vs. the adapter-disabled base
    # The saved adapter loads into a fresh model; with the adapter disabled it is the base model again.
    kind, opts = runs["kind"], model_options(runs["kind"])
    base = load_model(kind, str(runs["ckpt"]), opts, "cpu")
    tuned = load_model(kind, str(runs["ckpt"]), opts, "cpu")
    tuned.load_trainable_state_dict(weights(runs["straight"] / "checkpoint"))
    cond = base.encode_prompts(PROMPTS[:2])
    x = torch.randn((2, *base.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.5])
    with torch.no_grad():
        v_base, v_tuned = base.velocity(x, sigma, cond), tuned.velocity(x, sigma, cond)
        with tuned.reference():
            v_ref = tuned.velocity(x, sigma, cond)
    torch.testing.assert_close(v_ref, v_base)
    assert (v_tuned - v_base).abs().max() > 0
    assert all(p.requires_grad for p in tuned.trainable_parameters())


def test_resume_is_bit_identical_to_a_straight_run(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    for name in ("trainable.safetensors", "ema.safetensors"):
        ws, wr = weights(straight / "checkpoint", name), weights(resumed / "checkpoint", name)
        assert ws.keys() == wr.keys()
        assert all(torch.equal(ws[k], wr[k]) for k in ws), name
    ms, mr = metrics(straight), metrics(resumed)
    assert [e for e in mr if e > 0] == [1, 2]
    assert mr[2]["reward/mean"] == ms[2]["reward/mean"] and mr[2]["losses/kl"] == ms[2]["losses/kl"]
    # Held-out evaluation through the prompt-file world: the training reward on the eval images.
    assert ms[2]["eval/n"] == 1 and 0.0 <= ms[2]["eval/reward/mean"] <= 1.0
    assert (straight / "eval" / "epoch_0002.json").is_file()


def test_pickscore_reward_with_a_tiny_clip(tmp_path, prompt_file):
    clip = tmp_path / "clip"
    model, processor = clip_model_and_processor()
    model.save_pretrained(clip)
    processor.save_pretrained(clip)
    ckpt = tmp_path / "sd3"
    sd3_pipeline().save_pretrained(ckpt)
    reward = {
        "pickscore": {
            "model_path": str(clip),
            "processor_path": str(clip),
            "local_files_only": True,
            "device": "cpu",
            "divide_by": 26,
        }
    }
    out = train(
        make_cfg(
            tmp_path / "run",
            "sd3",
            ckpt,
            prompt_file,
            reward=reward,
            algorithm="grpo",
            epochs=1,
            num_steps=2,
            group_size=2,
        )
    )
    m = metrics(out)[1]
    assert m["reward/pickscore"] == pytest.approx(m["reward/mean"])  # weight 1
    assert 0 < abs(m["reward/mean"]) < 2 and m["reward/std"] > 0  # logit_scale (14.3) x cos / 26
    assert m["losses/ratio_dev_first"] < 1e-5
    assert "eval/reward/mean" in m
    trained = weights(out / "checkpoint")
    assert any(trained[k].abs().max() > 0 for k in trained if ".lora_B." in k)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_fsdp_over_two_processes_trains_like_one(kind, tmp_path, prompt_file):
    """`fsdp: true` on the diffusers adapters: the transformer's blocks sharded over 2 gloo processes (frozen
    weights and LoRA together), the same adapter as 1 process trains. adam_eps = 1 and lr = 1 make the
    update ~lr*g, so a gradient summed wrongly would show (see test_distributed.py)."""
    import os
    import subprocess
    import sys
    from dataclasses import asdict

    import yaml

    from test_distributed import assert_metrics_close, assert_weights_close, free_port

    ckpt = tmp_path / "pipeline"
    PIPELINES[kind]().save_pretrained(ckpt)
    kw = dict(adam_eps=1.0, lr=1.0, max_grad_norm=1e6)
    one = train(make_cfg(tmp_path / "one", kind, ckpt, prompt_file, **kw))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(asdict(make_cfg(tmp_path / "two", kind, ckpt, prompt_file, fsdp=True, **kw))))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "vgpo",
            "train",
            "--config",
            str(cfg),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = metrics(one), metrics(tmp_path / "two")
    # lr = 1 moves the policy far, so float-order noise in the sharded forward shows in the losses
    assert_metrics_close(m2, m1, ("reward/mean", "losses/policy", "losses/kl", "losses/grad_norm"), (1, 2), rel=1e-3)
    for epoch in (1, 2):
        assert m2[epoch]["perf/trainable_params_local"] == m1[epoch]["perf/trainable_params_local"] // 2
    assert_weights_close(weights(tmp_path / "two" / "checkpoint"), weights(one / "checkpoint"))
