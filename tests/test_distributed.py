"""Multi-process training on CPU (gloo): 2 processes under torchrun (and ``accelerate launch``) train
exactly what 1 process trains with the same global batch; only rank 0 writes; processes exit cleanly.

One optimizer step per epoch (8 samples: 2 processes x 4, or 1 x 8), so how the samples are split
between processes cannot change the update; adam_eps = 1 and lr = 1 make the first Adam step ~lr*g
(scale-sensitive, see test_trainer.py), so a gradient summed wrongly across processes would show.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vgpo import distributed
from vgpo.config import from_dict
from vgpo.models.tiny import TinyFlowModel
from vgpo.train import TrainConfig, train

EPOCHS = 2
COMPARED = (
    "reward/mean",
    "reward/std",
    "reward/group_std",
    "adv/abs_mean",
    "adv/kept_frac",
    "losses/policy",
    "losses/kl",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/grad_norm",
    "tcrm/q_0",
    "tcrm/omega_1",
)

# Runs `vgpo train` after installing an audit hook that records every file-system write under the run
# folder, per rank (written outside the run folder, at exit). Rank 1 loads perturbed weights, as a random
# (LoRA) init would differ between processes, so the runs only match if rank 0's weights are broadcast.
LAUNCHER = textwrap.dedent("""
    import atexit, json, os, sys
    out, log = os.path.realpath(sys.argv[1]), sys.argv[2]
    events = []
    WRITES = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "os.symlink",
              "os.link", "os.chmod"}

    def hook(event, args):
        if event == "open":
            paths, mode, flags = args[:1], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        else:  # os.rename (also raised by os.replace): source and destination
            paths, writing = args[:2] if event == "os.rename" else args[:1], event in WRITES
        for path in paths if writing else ():
            if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(out):
                events.append([event, os.fsdecode(path)])

    sys.addaudithook(hook)
    atexit.register(lambda: open(f"{log}.{os.environ['RANK']}.json", "w").write(json.dumps(events)))

    if os.environ["RANK"] == "1":  # rank 1 loads different weights: the trainer must start from rank 0's
        import torch
        from vgpo.models import tiny

        load = tiny.TinyFlowModel.load.__func__

        def perturbed(cls, *args, **kwargs):
            model = load(cls, *args, **kwargs)
            with torch.no_grad():
                for p in model.trainable_parameters():
                    p.add_(0.01)
            return model

        tiny.TinyFlowModel.load = classmethod(perturbed)
    from vgpo.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(out: Path, ckpt: Path, **kw) -> dict:
    data = dict(
        out=str(out),
        checkpoint=str(ckpt),
        reward="brightness",
        algorithm="vgpo",
        epochs=EPOCHS,
        prompts_per_epoch=2,
        group_size=4,
        sample_batch_size=4,
        train_batch_size=4,
        gradient_accumulation=1,
        num_steps=2,
        guidance_scale=2.0,
        lr=1.0,
        adam_eps=1.0,
        max_grad_norm=1e6,
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
    # fp32: 1 and 2 processes are compared to 1e-5, and bf16's gradient sums follow the batch split.
    data["model_options"] = {"precision": "fp32", **data.get("model_options", {})}
    return data


def metric_tolerance(key: str, got: dict, want: dict, run_scale: float, rel: float = 1e-5) -> float:
    """The absolute float noise one epoch's logged ``key`` may carry, from the scale of its terms (not its
    value, which can be ~0: a relative tolerance alone then compares noise with noise).

    The policy loss is a mean of -A*r over group-normalised advantages A at ratio r = 1 + noise: ~0, with
    noise |A| x (|r - 1| + float eps). approx_kl is 0.5 log(r)^2 <= ~0.5 |r - 1|^2. Every other metric is
    a mean of same-signed terms: noise ``rel`` x its largest value over the run (``run_scale``)."""
    dev = max(got["losses/ratio_dev_first"], want["losses/ratio_dev_first"]) + 1e-6
    if key == "losses/policy":
        return want["adv/abs_mean"] * 2 * dev
    if key == "losses/approx_kl":
        return dev**2
    return rel * run_scale


def assert_metrics_close(got: dict[int, dict], want: dict[int, dict], keys, epochs, rel: float = 1e-5) -> None:
    for key in keys:
        run_scale = max(abs(want[e][key]) for e in epochs)
        for epoch in epochs:
            tol = metric_tolerance(key, got[epoch], want[epoch], run_scale, rel)
            assert got[epoch][key] == pytest.approx(want[epoch][key], rel=rel, abs=tol), (epoch, key, tol)


def assert_weights_close(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], base: dict | None = None, rel: float = 1e-4
) -> None:
    """Weights (or, with ``base``, the training's change to them) equal up to ``rel`` of the largest
    change training made: an element that barely moved carries the same absolute noise as one that moved."""
    assert got.keys() == want.keys()
    ref = base or {k: torch.zeros_like(v) for k, v in want.items()}
    scale = (
        max(float((want[k] - ref[k]).abs().max()) for k in want)
        if base
        else max(float(v.abs().max()) for v in want.values())
    )
    for k in want:
        torch.testing.assert_close(got[k] - ref[k], want[k] - ref[k], rtol=rel, atol=rel * scale)


def launch(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def metrics(out: Path) -> dict[int, dict]:
    return {m["epoch"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def weights(out: Path, name: str = "trainable.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint" / name))


@pytest.fixture(scope="module")
def single(tiny_checkpoint, tmp_path_factory):
    """The 1-process reference: the same global batch (8 samples) in one process."""
    out = tmp_path_factory.mktemp("single") / "run"
    return train(from_dict(TrainConfig, config(out, tiny_checkpoint, train_batch_size=8, sample_batch_size=8)))


@pytest.fixture(scope="module")
def torchrun(tiny_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    out, cfg = tmp / "run", tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(out, tiny_checkpoint)))
    (tmp / "launcher.py").write_text(LAUNCHER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(tmp / "launcher.py"),
        str(out),
        str(tmp / "writes"),
        "train",
        "--config",
        str(cfg),
    ]
    proc = launch(cmd, tmp)
    return dict(out=out, proc=proc, writes={r: json.loads((tmp / f"writes.{r}.json").read_text()) for r in (0, 1)})


def assert_same_training(two: Path, one: Path) -> None:
    m2, m1 = metrics(two), metrics(one)
    assert sorted(e for e in m2 if e > 0) == sorted(e for e in m1 if e > 0) == list(range(1, EPOCHS + 1))
    for epoch in range(1, EPOCHS + 1):
        assert m2[epoch]["charts/optimizer_steps"] == m1[epoch]["charts/optimizer_steps"] == 1
        assert m2[epoch]["losses/ratio_dev_first"] < 1e-5
    assert_metrics_close(m2, m1, COMPARED, range(1, EPOCHS + 1))
    evaluated = [e for e in m1 if "eval/reward/mean" in m1[e]]  # held-out evaluation: rank 0, EMA weights
    assert EPOCHS in evaluated
    for epoch in evaluated:
        assert m2[epoch]["eval/reward/mean"] == pytest.approx(m1[epoch]["eval/reward/mean"], rel=1e-5)
    assert m1[EPOCHS]["losses/kl"] > 0 and m1[1]["losses/grad_norm"] > 0
    base_model = TinyFlowModel.load(json.loads((one / "config.json").read_text())["checkpoint"])
    base = base_model.trainable_state_dict()
    w2, w1 = weights(two), weights(one)
    assert any(not torch.equal(w1[k], base[k]) for k in w1)
    assert_weights_close(w2, w1, base)
    ema_base = {f"ema.{i}": p.detach() for i, p in enumerate(base_model.trainable_parameters())}
    assert_weights_close(weights(two, "ema.safetensors"), weights(one, "ema.safetensors"), ema_base)


def test_two_processes_train_like_one(torchrun, single):
    assert_same_training(torchrun["out"], single)


def test_only_rank_0_writes_and_processes_exit_cleanly(torchrun):
    writes = torchrun["writes"]
    assert writes[1] == [], writes[1][:5]
    written = {Path(p).name for _, p in writes[0]}
    assert {"metrics.jsonl", "config.json", "reward.png"} <= written
    out = torchrun["out"]
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "ema.safetensors",
        "optimizer.pt",
        "state.json",
        "trainable.safetensors",
    ]
    assert not list(out.glob(".*"))  # no temp folders or files left behind
    # Each process printed the CLI's closing line, i.e. returned from train() (process group torn down).
    assert torchrun["proc"].stdout.count("metrics: ") == 2


def test_accelerate_launch_multi_gpu_on_cpu(tiny_checkpoint, tmp_path, torchrun):
    """`accelerate launch --multi_gpu --num_processes 2` starts 2 gloo processes on a CPU-only machine
    (`--cpu` would start one) and trains bit-for-bit what torchrun trains."""
    pytest.importorskip("accelerate")
    out, cfg = tmp_path / "run", tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(out, tiny_checkpoint)))
    # = `accelerate launch ...`, with this interpreter
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "vgpo",
        "train",
        "--config",
        str(cfg),
    ]
    proc = launch(cmd, tmp_path)
    assert proc.stdout.count("metrics: ") == 2  # two processes ran
    for name in ("trainable.safetensors", "ema.safetensors"):
        a, b = weights(out, name), weights(torchrun["out"], name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_local_device_gives_each_process_its_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.local_device("cuda") == "cuda:3"
    assert distributed.local_device("cuda:1") == "cuda:1"  # explicit: left alone
    assert distributed.local_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.local_device("cuda") == "cuda"


def test_all_reduce_max_keeps_the_type_in_one_process():
    assert distributed.all_reduce_max(3) == 3 and isinstance(distributed.all_reduce_max(3), int)
    assert distributed.all_reduce_max(0.25) == 0.25


def _torchrun(tmp: Path, cfg_data: dict, resume: bool = False) -> subprocess.CompletedProcess:
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(cfg_data))
    (tmp / "launcher.py").write_text(LAUNCHER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(tmp / "launcher.py"),
        cfg_data["out"],
        str(tmp / "writes"),
        "train",
        "--config",
        str(cfg),
    ]
    return launch(cmd + (["--resume"] if resume else []), tmp)


def test_fsdp_two_processes_train_like_one_and_resume(tiny_checkpoint, tmp_path, single):
    """FSDP2 (fsdp: true): weights, gradients and Adam state sharded over 2 gloo processes, evaluation run by
    both (every forward is a collective), checkpoints gathered whole; the run, and a run stopped after
    epoch 1 and resumed, train what 1 process trains, with half of the trained weights on each process."""
    out = tmp_path / "run"
    _torchrun(tmp_path, config(out, tiny_checkpoint, fsdp=True))
    assert_same_training(out, single)
    assert json.loads((tmp_path / "writes.1.json").read_text()) == []  # rank 1 wrote nothing
    held, whole = metrics(out)[1]["perf/trainable_params_local"], metrics(single)[1]["perf/trainable_params_local"]
    assert 0.45 * whole < held < 0.55 * whole  # rank 0 holds half of the trained weights
    half = tmp_path / "half"
    _torchrun(tmp_path, config(half, tiny_checkpoint, fsdp=True, epochs=1))
    _torchrun(tmp_path, config(half, tiny_checkpoint, fsdp=True), resume=True)
    assert_same_training(half, single)
    saved = torch.load(half / "checkpoint" / "optimizer.pt", weights_only=True)["state"]
    reference = torch.load(single / "checkpoint" / "optimizer.pt", weights_only=True)["state"]
    assert saved.keys() == reference.keys()
    scale = max(float(st["exp_avg_sq"].max()) for st in reference.values())  # squared gradients: >= 0
    for i in reference:  # Adam's moments come back whole
        torch.testing.assert_close(saved[i]["exp_avg_sq"], reference[i]["exp_avg_sq"], rtol=1e-3, atol=1e-3 * scale)


def test_fsdp_with_a_lora_adapter_trains_like_one_process(tiny_checkpoint, tmp_path):
    """FSDP2 over a network that is frozen but for a LoRA adapter (the SD3.5 setting): frozen and trained
    weights share the sharded units; the trained adapter equals the 1-process one."""
    pytest.importorskip("peft")
    lora = {"lora": {"rank": 4, "alpha": 8}}
    one = train(
        from_dict(
            TrainConfig,
            config(tmp_path / "one", tiny_checkpoint, train_batch_size=8, sample_batch_size=8, model_options=lora),
        )
    )
    two, cfg = tmp_path / "two", tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(two, tiny_checkpoint, fsdp=True, model_options=lora)))
    launch(
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
        tmp_path,
    )
    m1, m2 = metrics(one), metrics(two)
    assert_metrics_close(
        m2, m1, ("reward/mean", "adv/abs_mean", "losses/policy", "losses/kl", "losses/grad_norm"), range(1, EPOCHS + 1)
    )
    assert m2[1]["perf/trainable_params_local"] == m1[1]["perf/trainable_params_local"] // 2
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys() and all(".lora_" in k for k in w1)
    assert_weights_close(w2, w1)


# Rank 1 scores every image 0.5: its group has zero reward spread, GRPO drops it, and rank 1 has no sample to
# train on while rank 0 has a full micro-batch.
UNEVEN_LAUNCHER = textwrap.dedent("""
    import os, sys
    import torch
    from vgpo.rewards import register

    @register("brightness-on-rank-0")
    def factory():
        rank = int(os.environ["RANK"])
        if rank == 0:
            return lambda images, prompts, metadata: images.mean(dim=(1, 2, 3))
        return lambda images, prompts, metadata: torch.full((len(images),), 0.5)

    from vgpo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize(("old_log_probs", "train_batch_size", "steps"), [("rollout", 4, 1), ("recompute", 2, 2)])
def test_fsdp_pads_a_process_with_fewer_kept_samples(tiny_checkpoint, tmp_path, old_log_probs, train_batch_size, steps):
    """GRPO with a zero-std group on one process only. Unsharded, that process trains on nothing and adds
    zero gradients (this once crashed on an empty micro-batch); under FSDP, whose collectives need the same
    number of passes everywhere, it runs zero-weight passes. Both give the same update. With recomputed old
    log-probs and two optimizer steps, the no-grad pre-pass of the second step is padded alike."""
    (tmp_path / "launcher.py").write_text(UNEVEN_LAUNCHER)
    outs = {}
    kw = dict(algorithm="grpo", reward="brightness-on-rank-0", old_log_probs=old_log_probs)
    kw.update(train_batch_size=train_batch_size)
    for fsdp in (False, True):
        out, cfg = tmp_path / f"fsdp-{fsdp}", tmp_path / f"fsdp-{fsdp}.yaml"
        cfg.write_text(yaml.safe_dump(config(out, tiny_checkpoint, fsdp=fsdp, **kw)))
        launch(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_port",
                str(free_port()),
                str(tmp_path / "launcher.py"),
                "train",
                "--config",
                str(cfg),
            ],
            tmp_path,
        )
        outs[fsdp] = out
    plain, sharded = metrics(outs[False]), metrics(outs[True])
    assert plain[1]["adv/kept_frac"] == 0.5 and plain[1]["charts/optimizer_steps"] == steps
    assert_metrics_close(
        sharded, plain, ("adv/kept_frac", "losses/policy", "losses/kl", "losses/grad_norm"), range(1, EPOCHS + 1)
    )
    assert_weights_close(weights(outs[True]), weights(outs[False]))
