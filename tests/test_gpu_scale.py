"""benchmarks/gpu_scale.py at its CI scale (toy widths, CPU) and the SD3.5-M architecture files on meta.

One module fixture runs ``--scale tiny`` once (1 epoch, GRPO and VGPO with tcrm_every 1 and 2, with
and without gradient checkpointing); the tests read its JSON. The real-size run needs a GPU
(docs/benchmarks/gpu/README.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_scale  # noqa: E402
from _tiny_pipelines import one_torch_thread  # noqa: E402, F401

RUN_FIELDS = {"algorithm", "tcrm_every", "gradient_checkpointing", "complete", "flops_per_sample", "epochs", "summary"}
SUMMARY_FIELDS = {
    "samples",
    "images_scored",
    "images_decoded",
    "kept_samples",
    "optimizer_steps",
    "trainer_fwd_bwd_s",
    "reward_mean",
    "phases_s",
    "epoch_s",
    "epoch_s_per_sample",
    "images_per_s",
    "scored_images_per_s",
    "transformer_sequences",
    "peak_memory_gb",
    "network_s_in_update",
    "network_share_of_update",
    "achieved_tflops",
    "update_fraction_of_peak",
    "epochs_averaged",
}
PHASES = {"rollout", "decode", "reward", "score_other", "advantages", "update"}
TOP_FIELDS = {
    "status",
    "command",
    "scale",
    "budget_s",
    "peak_tflops",
    "machine",
    "architecture",
    "runs",
    "not_run",
    "model",
    "settings",
    "setup_s",
    "flops",
    "network",
    "comparisons",
    "elapsed_s",
}
# --tcrm-every 1 2 and both checkpointing settings, in run order
RUNS = ["grpo", "vgpo-tcrm1", "vgpo-tcrm2", "grpo-ckpt", "vgpo-tcrm1-ckpt"]
TINY_ARGS = ["--scale", "tiny", "--tcrm-every", "1", "2", "--network-reps", "1", "--peak-tflops", "1"]


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_scale")
    path = gpu_scale.main([*TINY_ARGS, "--out", str(out)])
    return json.loads(path.read_text())


def test_sd35m_architecture_instantiates_to_its_published_size_on_meta():
    counts = gpu_scale.meta_parameter_counts(gpu_scale.SCALES["sd35m"])
    # SD3.5-M's "2.5B": 2.243B parameters plus the 0.226B sin-cos position table (384^2 x 1536)
    # that diffusers keeps as a buffer and the checkpoint stores.
    assert 2.20e9 < counts["transformer_params"] < 2.30e9
    assert counts["transformer_buffers"] == 384 * 384 * 1536
    assert 2.45e9 < counts["transformer_params"] + counts["transformer_buffers"] < 2.50e9
    assert 83e6 < counts["vae_params"] < 85e6  # the SD3 VAE, ~84M
    assert 985e6 < counts["reward_params"] < 987e6  # OpenCLIP ViT-H-14: 986.1M (632.1M image + 354.0M text)


def test_run_plan_order_and_names():
    runs = gpu_scale.plan_runs([1, 2, 5], ["off", "on"])
    assert [r.name for r in runs] == ["grpo", "vgpo-tcrm1", "vgpo-tcrm2", "vgpo-tcrm5", "grpo-ckpt", "vgpo-tcrm1-ckpt"]
    assert [r.name for r in gpu_scale.plan_runs([2], ["on"])] == ["grpo-ckpt", "vgpo-tcrm2-ckpt"]


def test_json_has_every_field(result):
    assert result["status"] == "complete" and result["not_run"] == []
    assert TOP_FIELDS <= set(result)
    assert list(result["runs"]) == RUNS
    for name, run in result["runs"].items():
        assert RUN_FIELDS <= set(run), name
        assert run["complete"] and len(run["epochs"]) == 1
        summary = run["summary"]
        assert SUMMARY_FIELDS <= set(summary), (name, SUMMARY_FIELDS - set(summary))
        assert set(summary["phases_s"]) == PHASES
        assert set(summary["achieved_tflops"]) == {"rollout", "decode", "reward", "update", "epoch"}
        assert summary["peak_memory_gb"]["max"] > 0
    assert set(result["network"]) == {"no_ckpt", "ckpt"}
    assert set(result["comparisons"]["epoch_s_ratio"]) == {
        "vgpo-tcrm1/grpo",
        "vgpo-tcrm2/grpo",
        "vgpo-tcrm1-ckpt/grpo-ckpt",
    }


def test_phases_add_up_to_the_epoch(result):
    for name, run in result["runs"].items():
        s = run["summary"]
        assert all(v >= -1e-6 for v in s["phases_s"].values()), (name, s["phases_s"])
        assert sum(s["phases_s"].values()) == pytest.approx(s["epoch_s"], rel=1e-9)
        assert s["phases_s"]["rollout"] > 0 and s["phases_s"]["update"] > 0 and s["phases_s"]["decode"] > 0
        assert s["images_per_s"] == pytest.approx(s["samples"] / s["epoch_s"])
        assert 0 < s["network_share_of_update"]


def test_vgpo_scores_more_images_than_grpo(result):
    runs, settings = result["runs"], result["settings"]
    samples = settings["samples_per_epoch"]
    assert samples == 4 and settings["num_steps"] == 4 and settings["trained_steps"] == 3
    # GRPO scores the finals; TCRM adds the projections of the scored steps before the last
    # (tcrm_every 1: steps 0, 1, 2; tcrm_every 2: steps 0, 2).
    assert runs["grpo"]["summary"]["images_scored"] == samples
    assert runs["vgpo-tcrm1"]["summary"]["images_scored"] == samples * 4
    assert runs["vgpo-tcrm2"]["summary"]["images_scored"] == samples * 3
    for name, run in runs.items():
        assert run["summary"]["images_decoded"] == run["summary"]["images_scored"], name


def test_transformer_work_is_counted(result):
    flops, runs = result["flops"], result["runs"]
    assert flops["transformer_fwd_per_seq"] > 0 and flops["vae_decode_per_image"] > 0 and flops["reward_per_image"] > 0
    assert flops["attention_counted"] is True
    # backward through the frozen network (input gradients) plus the LoRA weights' gradients
    assert flops["transformer_fwd_bwd_per_seq"] > 1.5 * flops["transformer_fwd_per_seq"]
    # every run: samples x steps x 2 (CFG) in the rollout; x trained steps with and without grad
    # (policy and KL reference) in the update
    for name, run in runs.items():
        assert run["summary"]["transformer_sequences"] == {
            "rollout": 4 * 4 * 2,
            "update_grad": 4 * 3 * 2,
            "update_nograd": 4 * 3 * 2,
        }, name
        assert run["summary"]["achieved_tflops"]["update"] > 0
        assert run["summary"]["update_fraction_of_peak"] == pytest.approx(run["summary"]["achieved_tflops"]["update"])


def test_budget_alarm_interrupts_work():
    started = time.monotonic()
    with pytest.raises(gpu_scale.BudgetExceeded):
        with gpu_scale.budget_alarm(0.2):
            while time.monotonic() - started < 5:
                pass
    assert time.monotonic() - started < 2


def test_a_tiny_budget_still_writes_the_json(tmp_path):
    path = gpu_scale.main([*TINY_ARGS, "--out", str(tmp_path), "--budget-s", "0.001"])
    data = json.loads(path.read_text())
    assert data["status"] == "stopped_by_budget"
    assert data["runs"] == {} and data["not_run"] == RUNS


def test_a_budget_stop_keeps_the_finished_runs(tmp_path, monkeypatch):
    """The budget runs out during the second measured run: the first stays, complete."""
    calls = []
    run_epoch = gpu_scale.run_epoch

    def stop_on_the_third_epoch(*args, **kwargs):  # 1: warm-up, 2: first run, 3: second run
        calls.append(1)
        if len(calls) == 3:
            raise gpu_scale.BudgetExceeded
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(gpu_scale, "run_epoch", stop_on_the_third_epoch)
    path = gpu_scale.main([*TINY_ARGS, "--checkpointing", "off", "--out", str(tmp_path)])
    data = json.loads(path.read_text())
    assert data["status"] == "stopped_by_budget"
    assert list(data["runs"]) == ["grpo", "vgpo-tcrm1"]
    assert data["runs"]["grpo"]["complete"] and data["runs"]["grpo"]["summary"]["epoch_s"] > 0
    assert not data["runs"]["vgpo-tcrm1"]["complete"] and data["runs"]["vgpo-tcrm1"]["epochs"] == []
    assert data["not_run"] == ["vgpo-tcrm1", "vgpo-tcrm2"]


def test_epoch_summary_by_hand():
    clock = gpu_scale.Clock(gpu_scale.torch.device("cpu"))
    clock.seconds = {
        "sample": 3.0,
        "decode@sample": 1.0,
        "score": 2.0,
        "decode@score": 0.5,
        "reward@score": 1.0,
        "advantages": 0.5,
        "update": 4.0,
    }
    clock.sequences = {"sample:nograd": 40, "update:grad": 36, "update:nograd": 36}
    clock.images_decoded = 8
    clock.peak_gb = {"sample": 1.0, "score": 2.0, "advantages": 1.0, "update": 3.0}
    raw = {"samples": 4, "images_scored": 8}
    flops = {
        "transformer_fwd_per_seq": 1e12,
        "transformer_fwd_bwd_per_seq": 3e12,
        "vae_decode_per_image": 2e12,
        "reward_per_image": 0.5e12,
    }
    network = {"fwd_bwd_s_per_seq": 0.05, "fwd_s_per_seq_update_batch": 0.02}
    s = gpu_scale.epoch_summary(raw, clock, flops, network, peak_tflops=100.0)
    assert s["phases_s"] == pytest.approx(
        {"rollout": 2.0, "decode": 1.5, "reward": 1.0, "score_other": 0.5, "advantages": 0.5, "update": 4.0}
    )
    assert s["epoch_s"] == pytest.approx(9.5) and s["images_per_s"] == pytest.approx(4 / 9.5)
    assert s["network_s_in_update"] == pytest.approx(0.05 * 36 + 0.02 * 36)
    assert s["network_share_of_update"] == pytest.approx(2.52 / 4.0)
    # rollout 40 x 1 TFLOP in 2 s; decode 8 x 2 in 1.5 s; reward 8 x 0.5 in 1 s; update (36 x 3 + 36 x 1) in 4 s
    assert s["achieved_tflops"] == pytest.approx(
        {"rollout": 20.0, "decode": 16 / 1.5, "reward": 4.0, "update": 36.0, "epoch": (40 + 16 + 4 + 144) / 9.5}
    )
    assert s["update_fraction_of_peak"] == pytest.approx(0.36)
    assert s["peak_memory_gb"]["max"] == 3.0


def test_mean_summary_drops_the_first_of_several_epochs():
    epochs = [
        {"epoch_s": 10.0, "phases_s": {"update": 6.0}},
        {"epoch_s": 4.0, "phases_s": {"update": 2.0}},
        {"epoch_s": 6.0, "phases_s": {"update": 4.0}},
    ]
    assert gpu_scale.mean_summary(epochs) == {"epoch_s": 5.0, "phases_s": {"update": 3.0}, "epochs_averaged": 2}
    assert gpu_scale.mean_summary(epochs[:1])["epoch_s"] == 10.0


def test_flops_per_sample_by_hand(tmp_path):
    args = gpu_scale.parse_args([*TINY_ARGS, "--out", str(tmp_path)])
    tiny, cpu = gpu_scale.SCALES["tiny"], gpu_scale.torch.device("cpu")
    flops = {
        "transformer_fwd_per_seq": 1,
        "transformer_fwd_bwd_per_seq": 3,
        "vae_decode_per_image": 10,
        "reward_per_image": 100,
    }
    # tiny: 4 steps, 3 trained, CFG (x2), KL beta 0.01 (a reference forward per trained step)
    grpo = gpu_scale.flops_per_sample(
        flops, gpu_scale.training_config(gpu_scale.Run("grpo", 1, False), tiny, args, cpu)
    )
    assert grpo == {"rollout": 8, "update": 24, "decode": 10, "reward": 100, "images_scored": 1, "total": 142}
    # tcrm_every 2 scores steps 0, 2, 3: the final image and the projections after steps 0 and 2
    vgpo = gpu_scale.flops_per_sample(
        flops, gpu_scale.training_config(gpu_scale.Run("vgpo", 2, False), tiny, args, cpu)
    )
    assert vgpo == {"rollout": 8, "update": 24, "decode": 30, "reward": 300, "images_scored": 3, "total": 362}


def test_the_flop_plan_matches_the_run(result):
    """The plan's images per sample are what the trainer scored, and the meta-device counts are the
    device's (attention's backward aside: the fused kernel's count includes its recomputed scores)."""
    samples = result["settings"]["samples_per_epoch"]
    for name, run in result["runs"].items():
        assert run["flops_per_sample"]["images_scored"] * samples == run["summary"]["images_scored"], name
    from vgpo.config import load_yaml

    meta = gpu_scale.meta_flops(gpu_scale.SCALES["tiny"], load_yaml(gpu_scale.PRESETS["vgpo"])["model_options"])
    for key in ("transformer_fwd_per_seq", "vae_decode_per_image", "reward_per_image"):
        assert meta[key] == result["flops"][key], key
    assert meta["transformer_fwd_bwd_per_seq"] == pytest.approx(
        result["flops"]["transformer_fwd_bwd_per_seq"], rel=0.05
    )


def test_flops_only_writes_the_plan(tmp_path):
    data = json.loads(gpu_scale.main([*TINY_ARGS, "--flops-only", "--out", str(tmp_path)]).read_text())
    assert data["status"] == "flops_only" and data["runs"] == {}
    assert set(data["flops_per_sample"]) == {"grpo", "vgpo-tcrm1", "vgpo-tcrm2"}
    assert data["flops_ratio"]["vgpo-tcrm1/grpo"] > data["flops_ratio"]["vgpo-tcrm2/grpo"] > 1
