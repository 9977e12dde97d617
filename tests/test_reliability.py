"""Nothing lost to bad numbers, bad files or a forgotten flag (docs/reliability.md lists what each test
guards). Runs are the tiny random model's (tests/conftest.py), a few seconds each."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vgpo.rewards as rewards
from conftest import TINY_RUN
from vgpo import utils
from vgpo.cli import main
from vgpo.config import check_fields, doc, from_dict
from vgpo.errors import VgpoError
from vgpo.pretrain import PretrainConfig
from vgpo.train import TrainConfig, objectives, run_folder, train, trainer

SMALL = dict(TINY_RUN, epochs=3, save_every=1, ema_decay=0.5, algorithm="grpo")


def _cfg(out, ckpt, **kw) -> TrainConfig:
    return from_dict(TrainConfig, {**SMALL, "out": str(out), "checkpoint": str(ckpt), **kw})


def _argv(out, ckpt, **kw) -> list[str]:
    data = {**SMALL, "out": str(out), "checkpoint": str(ckpt), **kw}
    return ["train", *[a for k, v in data.items() for a in ("--set", f"{k}={v}")]]


def _cli_error(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.replace("\r", "\n").splitlines()[-1]  # (progress bars before it)
    assert last.startswith("vgpo: error: ") and "Traceback" not in err and err.count("vgpo: error") == 1, err
    return last


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _epochs(out: Path) -> list[int]:
    return [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def snapshots(monkeypatch, tmp_path):
    """Copies of the checkpoint folder right after each save, by epoch."""
    saved: dict[int, dict[str, bytes]] = {}
    real = trainer.save_checkpoint

    def save(out, state, epoch, cfg):
        real(out, state, epoch, cfg)
        saved[epoch] = _files(out / "checkpoint")

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    return saved


# --------------------------------------------------------------------------------------------------
# Non-finite values
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("noise_level", "inf"),
        ("guidance_scale", "nan"),
        ("adv_clip_max", "nan"),
        ("max_grad_norm", "nan"),
        ("adae_k", "nan"),
        ("beta", "nan"),
        ("clip_range", "nan"),
        ("lr", "nan"),
        ("gamma", "-inf"),
        ("ema_decay", "nan"),
    ],
)
def test_config_refuses_non_finite_floats(field, value):
    with pytest.raises(VgpoError, match=f"^{field}: expected a finite number"):
        from_dict(TrainConfig, {field: value})


def test_every_float_field_is_checked_also_new_ones():
    """The check is generic: a float field nobody wrote a range check for, and floats inside containers."""

    @dataclasses.dataclass
    class Later:
        added_field: float = doc(1.0, "a field added after the check was written")
        options: dict = doc({}, "nested values")

        def __post_init__(self):
            check_fields(self)

    Later()
    with pytest.raises(VgpoError, match="added_field"):
        Later(added_field=math.nan)
    with pytest.raises(VgpoError, match="options"):
        Later(options={"scale": [1.0, math.inf]})
    with pytest.raises(VgpoError, match="lr"):
        PretrainConfig(lr=math.nan)
    with pytest.raises(VgpoError, match="model_options"):
        TrainConfig(model_options={"lora": {"alpha": math.nan}})
    with pytest.raises(VgpoError, match="weight"):
        rewards.build({"brightness": math.nan})


@rewards.register("test-nan-on-call")
class NanOnCall:
    """brightness, but NaN for ``bad`` samples on the ``call``-th call (1-based)."""

    def __init__(self, call: int = 3, bad: int = 2, value: str = "nan"):  # (a config refuses a NaN option)
        self.call, self.bad, self.value, self.calls = call, bad, float(value), 0

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        out = images.float().mean(dim=(1, 2, 3))
        if self.calls == self.call:
            out[: self.bad] = self.value
        return out


@rewards.register("test-wrong-shape")
def _wrong_shape():
    return lambda images, prompts, metadata: images.float().mean(dim=(2, 3))  # (B, 3): one value per channel


@pytest.mark.parametrize("value", ["nan", "-inf"])
def test_nan_reward_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path, tiny_checkpoint, snapshots, value):
    """Epoch 3's reward has 2 bad samples: a one-line error names the reward, the epoch and the count; the
    checkpoint on disk is byte-identical to epoch 2's and the metrics of epochs 1-2 are kept."""
    cfg = _cfg(tmp_path / "run", tiny_checkpoint, reward={"test-nan-on-call": {"call": 3, "bad": 2, "value": value}})
    with pytest.raises(VgpoError) as err:
        train(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "test-nan-on-call" in msg and "epoch 3" in msg and "2 of 8 samples" in msg
    assert sorted(snapshots) == [1, 2]
    assert _files(tmp_path / "run" / "checkpoint") == snapshots[2]
    assert _epochs(tmp_path / "run") == [1, 2]
    assert not (tmp_path / "run" / ".checkpoint.tmp").exists()


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path, tiny_checkpoint, snapshots, monkeypatch):
    """A loss that turns NaN in epoch 2 (the reward is fine): stopped before optimizer.step, named, and the
    epoch-1 checkpoint stays byte-identical."""
    real, calls = objectives.ppo_clip_loss, []

    def loss(log_prob, old, adv, clip):
        calls.append(1)
        terms, ratio = real(log_prob, old, adv, clip)
        return (terms * math.nan if len(calls) > 8 else terms), ratio  # 2 micro-batches x 4 steps per epoch

    monkeypatch.setattr(objectives, "ppo_clip_loss", loss)
    stepped = []
    monkeypatch.setattr(
        torch.optim.AdamW, "step", lambda self, *a, real=torch.optim.AdamW.step: stepped.append(1) or real(self, *a)
    )
    with pytest.raises(VgpoError, match=r"^epoch 2: non-finite gradient norm nan, policy loss nan"):
        train(_cfg(tmp_path / "run", tiny_checkpoint))
    assert len(stepped) == 1  # epoch 1's step only
    assert _files(tmp_path / "run" / "checkpoint") == snapshots[1] and sorted(snapshots) == [1]
    assert _epochs(tmp_path / "run") == [1]


def test_reward_of_the_wrong_shape_is_one_line(capsys, tmp_path, tiny_checkpoint):
    err = _cli_error(capsys, _argv(tmp_path / "run", tiny_checkpoint, reward="test-wrong-shape"))
    assert "test-wrong-shape" in err and "(8, 3)" in err and "expected (8,)" in err


def test_check_rewards_refuses_what_is_not_one_finite_value_per_image():
    assert rewards.check_rewards(torch.tensor([1.0, 2.0], dtype=torch.float64), 2, "r").dtype == torch.float32
    for bad, match in [
        ([1.0, 2.0], "list"),
        (torch.ones(3), r"shape \(3,\)"),
        (torch.ones(2, 1), r"shape \(2, 1\)"),
        (torch.tensor([1.0, math.inf]), "1 of 2 samples"),
        (torch.tensor([3e38, 3e38]) * 10, "2 of 2 samples"),
    ]:
        with pytest.raises(VgpoError, match=match):
            rewards.check_rewards(bad, 2, "r", "epoch 4")


# --------------------------------------------------------------------------------------------------
# Run folders: fresh, overwrite, resume
# --------------------------------------------------------------------------------------------------
def test_fresh_run_into_a_run_folder_is_refused_and_overwrite_starts_again(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    assert main(_argv(out, tiny_checkpoint, epochs=1)) == 0
    before = _files(out)
    err = _cli_error(capsys, _argv(out, tiny_checkpoint, epochs=1))
    assert "--resume" in err and "--overwrite" in err and str(out) in err
    assert _files(out) == before  # nothing touched
    (out / "notes.txt").write_text("mine")
    assert main(_argv(out, tiny_checkpoint, epochs=1, seed=1) + ["--overwrite"]) == 0
    assert _files(out)["checkpoint/trainable.safetensors"] != before["checkpoint/trainable.safetensors"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are removed
    assert _epochs(out) == [1]


def test_empty_out_is_refused(capsys, tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _cli_error(capsys, _argv("", tiny_checkpoint))
    assert "out" in err
    assert list(tmp_path.iterdir()) == []


def test_resume_with_a_config_that_changes_the_computation_is_refused(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    train(_cfg(out, tiny_checkpoint, epochs=1))
    saved = (out / "checkpoint" / "state.json").read_bytes()
    err = _cli_error(capsys, _argv(out, tiny_checkpoint, epochs=2, lr=0.01, algorithm="vgpo") + ["--resume"])
    assert "algorithm" in err and "lr" in err and "epochs" not in err
    assert (out / "checkpoint" / "state.json").read_bytes() == saved
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3  # the saved config is not rewritten
    # epochs, threads and the batch sizes of sampling and evaluation may change: they do not change what is computed
    run_folder.check_resumable(out, _cfg(out, tiny_checkpoint, epochs=5, threads=4, eval_every=2, save_every=3))
    train(_cfg(out, tiny_checkpoint, epochs=2, sample_batch_size=3, eval_batch_size=1), resume=True)
    assert _epochs(out) == [1, 2]


def test_keep_refuses_a_finished_run_with_other_settings(tmp_path, tiny_checkpoint):
    """benchmarks/demo_seeds.py --keep reuses a finished run only when it ran with the settings asked for (a
    mistyped override that trains nothing must not put another run's numbers under its name)."""
    out = tmp_path / "run"
    cfg = _cfg(out, tiny_checkpoint, epochs=1)
    run_folder.write_config(out, cfg)
    run_folder.check_kept(out, cfg)
    run_folder.check_kept(out, _cfg(out, tiny_checkpoint, epochs=1, threads=3, eval_every=2))  # same computation
    asked = _cfg(out, tiny_checkpoint, epochs=1, lr=0.01, model_options={"lora": {"rank:16": None}})
    expected = r"^--keep: .*config\.json ran with other settings: lr \(.*model_options"
    with pytest.raises(VgpoError, match=expected) as err:
        run_folder.check_kept(out, asked)
    assert "\n" not in str(err.value)
    with pytest.raises(VgpoError, match="config.json: file not found"):
        run_folder.check_kept(tmp_path / "missing", cfg)


def test_resume_drops_a_partial_last_metrics_line(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    train(_cfg(out, tiny_checkpoint, epochs=1))
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "reward/me')  # a write cut short by a full disk
    train(_cfg(out, tiny_checkpoint, epochs=2), resume=True)
    assert _epochs(out) == [1, 2]


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a crafted run folder would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_in_optimizer_pt_is_refused(capsys, tmp_path, tiny_checkpoint):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    train(_cfg(out, tiny_checkpoint, epochs=1))
    state = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, out / "checkpoint" / "optimizer.pt")
    err = _cli_error(capsys, _argv(out, tiny_checkpoint, epochs=2) + ["--resume"])
    assert "optimizer.pt" in err and "refused" in err
    assert not marker.exists()


def test_pickle_payload_in_pretraining_resume_pt_is_refused(capsys, tmp_path):
    out, marker = tmp_path / "pre", tmp_path / "pwned"
    common = [
        "pretrain",
        "--batch-size",
        "2",
        "--save-every",
        "1",
        "--warmup-steps",
        "1",
        "--threads",
        "1",
        "--channels",
        "8,8,8",
        "--out",
        str(out),
    ]
    assert main(common + ["--steps", "1"]) == 0
    state = torch.load(out / "resume.pt", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, out / "resume.pt")
    err = _cli_error(capsys, common + ["--steps", "2"])
    assert "resume.pt" in err and not marker.exists()


def test_corrupt_or_truncated_model_safetensors_names_the_file(capsys, tmp_path, tiny_checkpoint):
    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, base)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    err = _cli_error(capsys, _argv(tmp_path / "run", base))
    assert str(weights) in err
    weights.write_bytes(b"\x00garbage" * 10)
    assert str(weights) in _cli_error(capsys, ["eval", "--checkpoint", str(base)])


@pytest.mark.parametrize(
    "name, damage",
    [
        ("state.json", lambda p: p.write_text('{"epoch": 1, "conf')),
        ("state.json", lambda p: p.write_text("[1, 2]")),
        ("trainable.safetensors", lambda p: p.write_bytes(p.read_bytes()[:50])),
        ("ema.safetensors", lambda p: p.write_bytes(b"\xff" * 64)),
        ("optimizer.pt", lambda p: p.write_bytes(p.read_bytes()[:300])),
    ],
)
def test_corrupt_checkpoint_file_is_one_line_naming_it(capsys, tmp_path, tiny_checkpoint, name, damage):
    out = tmp_path / "run"
    train(_cfg(out, tiny_checkpoint, epochs=1))
    damage(out / "checkpoint" / name)
    err = _cli_error(capsys, _argv(out, tiny_checkpoint, epochs=2) + ["--resume"])
    assert f"checkpoint/{name}" in err
    if name != "optimizer.pt":
        assert f"checkpoint/{name}" in _cli_error(capsys, ["eval", "--run", str(out), "--steps", "1", "--limit", "1"])


def test_binary_yaml_lr_nan_and_unknown_device_are_one_line(capsys, tmp_path, tiny_checkpoint):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert "cfg.yaml" in _cli_error(capsys, ["train", "--config", str(cfg)])
    assert _cli_error(capsys, _argv(tmp_path / "a", tiny_checkpoint, lr="nan")).startswith("vgpo: error: lr:")
    assert "tpu" in _cli_error(capsys, _argv(tmp_path / "b", tiny_checkpoint, device="tpu"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------------
# Full disk
# --------------------------------------------------------------------------------------------------
def test_disk_full_during_a_save_is_one_line_and_resume_continues_after(
    capsys, tmp_path, tiny_checkpoint, snapshots, monkeypatch
):
    """The disk fills while epoch 2's checkpoint is written: one line naming the file and the cause; the
    epoch-1 checkpoint stays; once space is free, --resume finishes the run as an uninterrupted one."""
    out, full, fills = tmp_path / "run", [], []
    real_write, real_save = utils._os_write, trainer.save_checkpoint

    def write(fd, data):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def save(out_, state, epoch, cfg):
        if epoch == 2 and not fills:  # the disk fills once
            full.append(1)
            fills.append(1)
        real_save(out_, state, epoch, cfg)

    monkeypatch.setattr(utils, "_os_write", write)
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    err = _cli_error(capsys, _argv(out, tiny_checkpoint))
    assert "no space left on device" in err and ".checkpoint.tmp/trainable.safetensors" in err
    assert _files(out / "checkpoint") == snapshots[1]
    full.clear()
    assert main(_argv(out, tiny_checkpoint) + ["--resume"]) == 0
    reference = train(_cfg(tmp_path / "ref", tiny_checkpoint))
    got, want = _files(out / "checkpoint"), _files(reference / "checkpoint")
    assert got.pop("state.json") != want.pop("state.json")  # (they name their own folders)
    assert got == want  # weights, EMA and optimizer state byte-identical
    assert _epochs(out) == [1, 2, 3]


def test_disk_full_while_logging_metrics_is_one_line(capsys, tmp_path, tiny_checkpoint, monkeypatch):
    def write(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_append = run_folder.append_line
    monkeypatch.setattr(
        run_folder,
        "append_line",
        lambda path, line: (monkeypatch.setattr(utils, "_os_write", write), real_append(path, line)),
    )
    err = _cli_error(capsys, _argv(tmp_path / "run", tiny_checkpoint, epochs=1))
    assert err.endswith("metrics.jsonl: no space left on device")


# --------------------------------------------------------------------------------------------------
# kill -9, then --resume
# --------------------------------------------------------------------------------------------------
KILLER = textwrap.dedent("""
    import json, os, pathlib, signal, sys
    from vgpo.config import from_dict
    from vgpo.train import TrainConfig, train, trainer

    moment, epoch, cfg = sys.argv[1], int(sys.argv[2]), from_dict(TrainConfig, json.loads(sys.argv[3]))
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if moment == "update":  # in the middle of the epoch's update, before its optimizer step (one per epoch)
        import torch
        real_step, steps = torch.optim.AdamW.step, [0]
        def step(self, *a, **k):
            steps[0] += 1
            return die() if steps[0] == epoch else real_step(self, *a, **k)
        torch.optim.AdamW.step = step
    elif moment == "save":  # the new checkpoint half written in .checkpoint.tmp (before its optimizer.pt)
        from vgpo.train import run_folder
        real_save, saves = run_folder.atomic_torch_save, [0]
        def save(obj, path):
            saves[0] += 1
            die() if saves[0] == epoch else real_save(obj, path)
        run_folder.atomic_torch_save = save
    elif moment == "rename":  # between the two renames: checkpoint/ moved to .checkpoint.old, the new one not yet in
        real_rename = pathlib.Path.rename
        count = [0]
        def rename(self, target):
            result = real_rename(self, target)
            if pathlib.Path(target).name == ".checkpoint.old":
                count[0] += 1
                if count[0] == epoch - 1:
                    die()
            return result
        pathlib.Path.rename = rename
    train(cfg)
""")


KILLED = dict(algorithm="vgpo", eval_base=True)


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, tmp_path_factory):
    return train(_cfg(tmp_path_factory.mktemp("uninterrupted") / "run", tiny_checkpoint, **KILLED))


@pytest.mark.parametrize("moment", ["update", "save", "rename"])
def test_kill_9_then_resume_gives_the_uninterrupted_run(tmp_path, tiny_checkpoint, uninterrupted, moment):
    cfg = _cfg(tmp_path / "killed", tiny_checkpoint, **KILLED)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-c", KILLER, moment, "2", json.dumps(dataclasses.asdict(cfg))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    out = Path(cfg.out)
    if moment == "rename":
        assert not (out / "checkpoint").exists() and (out / ".checkpoint.old").is_dir()
    resumed = train(cfg, resume=True)
    reference = uninterrupted
    got, want = _files(resumed / "checkpoint"), _files(reference / "checkpoint")
    assert got.keys() == want.keys()
    for name in ("trainable.safetensors", "ema.safetensors"):
        a, b = load_file(str(resumed / "checkpoint" / name)), load_file(str(reference / "checkpoint" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _epochs(resumed) == [0, 1, 2, 3]
    rows = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(ln) for ln in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("reward/mean") for r in rows] == [r.get("reward/mean") for r in ref_rows]
    assert not (resumed / ".checkpoint.old").exists() and not (resumed / ".checkpoint.tmp").exists()


def test_a_prompt_longer_than_the_context_is_reported_once():
    import warnings

    from vgpo.models.tokenizer import PromptTokenizer

    tok = PromptTokenizer(["a", "photo", "of", "circle"], max_tokens=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, _ = tok(["a photo of circle", "a photo " * 5000, "of " * 100])
    assert [str(w.message) for w in caught] == [
        "prompt of 10000 tokens cut to the model's 4: "
        "'a photo a photo a photo a photo a photo a photo a photo a ph'... "
        "(reported once; later long prompts are cut too)"
    ]
    assert ids.shape == (3, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok(["a photo of circle"])  # exactly the context: no warning
    assert caught == []


def test_a_corrupt_metrics_row_before_others_is_named(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    train(_cfg(out, tiny_checkpoint, epochs=2))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    err = _cli_error(capsys, _argv(out, tiny_checkpoint, epochs=3) + ["--resume"])
    assert "metrics.jsonl:1" in err


PRETRAIN = [
    "pretrain",
    "--batch-size",
    "2",
    "--save-every",
    "1",
    "--warmup-steps",
    "1",
    "--threads",
    "1",
    "--channels",
    "8,8,8",
]


def test_pretraining_stops_on_a_non_finite_loss_and_a_full_disk(capsys, tmp_path, monkeypatch):
    from vgpo import pretrain

    out = tmp_path / "pre"
    assert main([*PRETRAIN, "--steps", "1", "--out", str(out)]) == 0
    saved = _files(out)
    real_mse = pretrain.F.mse_loss
    monkeypatch.setattr(pretrain.F, "mse_loss", lambda *a, **k: real_mse(*a, **k) * math.nan)
    err = _cli_error(capsys, [*PRETRAIN, "--steps", "2", "--out", str(out)])
    assert "step 2: non-finite" in err
    assert _files(out) == {**saved, "log.jsonl": saved["log.jsonl"]}  # the saved model and resume.pt untouched
    monkeypatch.setattr(pretrain.F, "mse_loss", real_mse)
    monkeypatch.setattr(utils, "_os_write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    err = _cli_error(capsys, [*PRETRAIN, "--steps", "2", "--out", str(out)])
    assert err.endswith("log.jsonl: no space left on device")
