"""A training run's folder: the only code that knows its layout.

    <out>/config.json          the config of the latest invocation
    <out>/metrics.jsonl        one JSON row per finished epoch (row 0: the base model's evaluation)
    <out>/checkpoint/          trainable.safetensors, ema.safetensors, optimizer.pt, state.json
                               (+ old_policy.safetensors for nft/awm)
    <out>/.checkpoint.tmp      a checkpoint being written (renamed to checkpoint/ when complete)
    <out>/.checkpoint.old      the previous checkpoint during the swap (a crash between renames leaves it)
    <out>/eval/                epoch_NNNN.png / .json held-out evaluations
    <out>/reward.png, tb/      the reward curve, TensorBoard logs

Guarantees kept here: a checkpoint is swapped in only when complete; a fresh run never overwrites a
run folder unless told to (``overwrite``); a resumed run must compute what the saved one computed;
every file is loaded with a one-line error naming it when it is corrupt, and ``optimizer.pt`` is
loaded with ``weights_only=True`` (a crafted pickle cannot run code).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from vgpo import distributed as dist
from vgpo.config import check_device_available
from vgpo.errors import VgpoError
from vgpo.models import FlowModel, load_model
from vgpo.train.config import TrainConfig
from vgpo.utils import (
    append_line,
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write_text,
    disk_error,
    load_json,
    load_safetensors,
    load_torch,
)

CHECKPOINT, CHECKPOINT_TMP, CHECKPOINT_OLD = "checkpoint", ".checkpoint.tmp", ".checkpoint.old"
METRICS, CONFIG, EVAL = "metrics.jsonl", "config.json", "eval"
# Everything a run writes: what --overwrite removes (nothing else in the folder is touched).
RUN_FILES = (CHECKPOINT, CHECKPOINT_TMP, CHECKPOINT_OLD, METRICS, CONFIG, EVAL, "reward.png", "tb")

# Fields that may differ between a run and its resume: they do not change the trained weights or the
# logged metrics (results do not depend on the sampling or evaluation batch size; epochs may grow).
# Anything else (device and FSDP included: they change the float arithmetic) must match.
RESUME_MAY_DIFFER = frozenset(
    {"out", "threads", "epochs", "sample_batch_size", "eval_batch_size", "eval_every", "save_every", "eval_base"}
)


# --------------------------------------------------------------------------------------------------
# Starting a run
# --------------------------------------------------------------------------------------------------
def has_checkpoint(out: Path) -> bool:
    return any((Path(out) / d / "state.json").is_file() for d in (CHECKPOINT, CHECKPOINT_OLD))


def prepare(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """Check the run folder before anything is loaded or written; returns it.

    Fresh run: refused when the folder holds a run (unless ``overwrite``: that run's files are removed).
    Resume: refused without a checkpoint, or when the saved config computes something else."""
    if not cfg.out.strip():
        raise VgpoError("out: expected a folder for the run, got an empty path")
    check_device_available(cfg.device)
    out = Path(cfg.out)
    if resume and overwrite:
        raise VgpoError("--resume and --overwrite: choose one (continue the run, or start it again)")
    if out.exists() and not out.is_dir():
        raise VgpoError(f"out: {out} is a file, expected a folder")
    if resume:
        check_resumable(out, cfg)
        return out
    # Called before the process group exists: the launcher's RANK says which process owns the folder (the
    # others could see its first writes as an existing run).
    if os.environ.get("RANK", "0") != "0":
        return out
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        what = "a checkpoint" if has_checkpoint(out) else f"a run ({existing[0]})"
        raise VgpoError(f"{out} already holds {what}: pass --resume to continue it or --overwrite to start again")
    if existing:
        for name in existing:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


def check_resumable(out: Path, cfg: TrainConfig) -> None:
    """Refuse a resume whose config changes what the run computes, naming the differing fields."""
    saved, where = read_state(out)
    changes = config_changes(saved["config"], cfg)
    if changes:
        raise VgpoError(
            f"--resume: the config changes what {out} computes: {changes}; "
            "use the saved config, or a new --out (or --overwrite to start again)"
        )
    read_metrics(out / METRICS)  # a corrupt row is named before anything is written
    if cfg.epochs < saved["epoch"]:
        raise VgpoError(f"epochs: {cfg.epochs} is fewer than the {saved['epoch']} epochs {where} already holds")


def config_changes(saved: dict, cfg: TrainConfig) -> str:
    """The fields outside ``RESUME_MAY_DIFFER`` where ``cfg`` computes something other than a run's ``saved``
    config, as ``name (saved -> cfg's)``, the first four named; '' when none. A field the saved config lacks
    was added later: it counts as its default (the behaviour the run had)."""
    defaults = asdict(TrainConfig())
    mine = asdict(cfg)
    diff = sorted(
        f.name
        for f in fields(TrainConfig)
        if f.name not in RESUME_MAY_DIFFER and _plain(mine[f.name]) != _plain(saved.get(f.name, defaults[f.name]))
    )
    shown = ", ".join(f"{k} ({saved.get(k, defaults[k])!r} -> {mine[k]!r})" for k in diff[:4])
    return shown + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")


def check_kept(out: Path, cfg: TrainConfig) -> None:
    """Refuse to reuse a finished run (``--keep``) whose ``config.json`` computes something other than ``cfg``."""
    changes = config_changes(load_json(Path(out) / CONFIG), cfg)
    if changes:
        raise VgpoError(
            f"--keep: {Path(out) / CONFIG} ran with other settings: {changes}; "
            "ask for the settings it ran with, or a new --out"
        )


def _plain(value: object) -> object:
    return json.loads(json.dumps(value))  # tuples vs lists, as stored


def write_config(out: Path, cfg: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(asdict(cfg), indent=2) + "\n", out / CONFIG)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainingState:
    """What a checkpoint holds besides its config, as whole (unsharded) tensors."""

    trainable: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # <name>.safetensors (e.g. old_policy)


def gather_training_state(
    model: FlowModel,
    optimizer: torch.optim.Optimizer,
    ema: list[torch.Tensor] | None,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> TrainingState:
    """The checkpoint's tensors, whole. Under FSDP this gathers shards: every process must call it."""
    trainable = {k: dist.full_tensor(v).detach().cpu() for k, v in model.trainable_state_dict().items()}
    ema_state = None if ema is None else {f"ema.{i}": dist.full_tensor(e).cpu() for i, e in enumerate(ema)}
    opt = optimizer.state_dict()
    opt["state"] = {
        i: {k: dist.full_tensor(v) if torch.is_tensor(v) else v for k, v in st.items()}
        for i, st in opt["state"].items()
    }
    return TrainingState(trainable, ema_state, opt, dict(extra or {}))


def save_checkpoint(out: Path, state: TrainingState, epoch: int, cfg: TrainConfig) -> None:
    """Write out/checkpoint atomically: a complete temp folder is renamed over the old one."""
    final, tmp, old = out / CHECKPOINT, out / CHECKPOINT_TMP, out / CHECKPOINT_OLD
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise disk_error(err, tmp) from None
    atomic_save_safetensors(state.trainable, tmp / "trainable.safetensors")
    if state.ema is not None:
        atomic_save_safetensors(state.ema, tmp / "ema.safetensors")
    atomic_torch_save(state.optimizer, tmp / "optimizer.pt")
    for name, tensors in state.extra.items():
        atomic_save_safetensors(tensors, tmp / f"{name}.safetensors")
    atomic_write_text(json.dumps({"epoch": epoch, "config": asdict(cfg)}, indent=2) + "\n", tmp / "state.json")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_dir(out: Path) -> Path:
    out = Path(out)
    ckpt = out / CHECKPOINT
    if (ckpt / "state.json").is_file():
        return ckpt
    old = out / CHECKPOINT_OLD  # a crash between the two renames leaves the previous one here
    if (old / "state.json").is_file():
        return old
    raise VgpoError(f"{out}: no training checkpoint (expected {ckpt}/state.json)")


_checkpoint_dir = checkpoint_dir


def read_state(out: Path) -> tuple[dict, Path]:
    """The checkpoint's state.json (finished epochs and config), checked; and its path."""
    path = checkpoint_dir(out) / "state.json"
    state = load_json(path)
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("epoch"), int)
        or state["epoch"] < 0
        or not isinstance(state.get("config"), dict)
    ):
        raise VgpoError(f'{path}: not a checkpoint state (expected {{"epoch": N, "config": {{...}}}})')
    return state, path


def load_weights(out: Path, model: FlowModel) -> int:
    """Load a checkpoint's trained weights into an unsharded model; returns the number of finished epochs."""
    state, _ = read_state(out)
    path = checkpoint_dir(out) / "trainable.safetensors"
    try:
        model.load_trainable_state_dict(load_safetensors(path, device=str(model.device)))
    except (KeyError, RuntimeError) as err:
        raise VgpoError(f"{path}: does not fit the model ({str(err).splitlines()[0][:200]})") from None
    return state["epoch"]


def load_ema(out: Path, ema: list[torch.Tensor]) -> None:
    """Restore the EMA weights (into sharded tensors too: each process keeps its shard)."""
    path = checkpoint_dir(out) / "ema.safetensors"
    if not path.is_file():  # saved without EMA: it starts from the trained weights
        return
    saved = load_safetensors(path)
    try:
        with torch.no_grad():
            for i, e in enumerate(ema):
                e.copy_(dist.shard_like(saved[f"ema.{i}"], e))
    except (KeyError, RuntimeError) as err:
        raise VgpoError(
            f"{path}: does not fit the model's trainable parameters ({str(err).splitlines()[0][:200]})"
        ) from None


def load_extra(out: Path, name: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint's ``<name>.safetensors`` saved from ``TrainingState.extra``, and its path."""
    path = checkpoint_dir(out) / f"{name}.safetensors"
    if not path.is_file():
        raise VgpoError(f"{path}: not found; this run's config keeps {name} in its checkpoint, and resuming needs it")
    return load_safetensors(path), path


def load_optimizer(out: Path, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    """Restore the optimizer state, each tensor sharded as its parameter (under FSDP)."""
    path = checkpoint_dir(out) / "optimizer.pt"
    state = load_torch(path)
    try:
        for i, st in state["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == params[i].shape:
                    st[k] = dist.shard_like(v, params[i])
        optimizer.load_state_dict(state)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise VgpoError(f"{path}: not an optimizer state of this model ({type(err).__name__}: {err})") from None


def load_trained_model(out: str | Path, device: str = "cpu") -> tuple[FlowModel, TrainConfig, int]:
    """The model of a training run folder, with its EMA weights when it kept them (what the run's
    evaluations used); returns (model, config, finished epochs)."""
    from vgpo.config import from_dict

    out = Path(out)
    state, path = read_state(out)
    cfg = from_dict(TrainConfig, state["config"], f"{path}: ")
    model = load_model(cfg.model, cfg.checkpoint, cfg.model_options, device)
    epoch = load_weights(out, model)
    if cfg.ema_decay > 0:
        load_ema(out, model.trainable_parameters())  # the EMA weights replace the trained ones
    return model, cfg, epoch


def load_checkpoint_weights(model: FlowModel, run_dir: str | Path, use_ema: bool = True) -> None:
    """Load a run's trained weights into ``model``, then its EMA weights when it kept them and ``use_ema``."""
    load_weights(Path(run_dir), model)
    if use_ema:
        load_ema(Path(run_dir), model.trainable_parameters())


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics file. A last line that is not a complete row (a write cut short by a full
    disk or a kill) is dropped; an unreadable row before others is a one-line error naming the line."""
    if not path.is_file():
        return []
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            if number == len(lines):
                break
            raise VgpoError(f"{path}:{number}: not a metrics row (expected a JSON object with an integer epoch)")
        rows.append(row)
    return rows


class MetricsLog:
    """metrics.jsonl (one line per epoch, written with one append), plus TensorBoard when installed."""

    def __init__(self, out: Path, resume_epoch: int):
        self.path = out / METRICS
        if resume_epoch:  # drop epochs after the checkpoint (they will be redone) and any partial row
            rows = [r for r in read_metrics(self.path) if r["epoch"] <= resume_epoch]
            atomic_write_text("".join(json.dumps(r) + "\n" for r in rows), self.path)
        elif self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            self.tb = None

    def write(self, epoch: int, metrics: dict) -> None:
        append_line(self.path, json.dumps({"epoch": epoch, **metrics}))
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_rewards(metrics_path: Path, out: Path, headline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(
        [r["epoch"] for r in rows if "reward/mean" in r],
        [r["reward/mean"] for r in rows if "reward/mean" in r],
        label="train reward (mean)",
    )
    evals = [r for r in rows if headline in r]
    if evals:
        ax.plot([r["epoch"] for r in evals], [r[headline] for r in evals], "o-", label=f"held-out {headline[5:]}")
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_run(out: Path, headline: str) -> None:
    """reward.png: the training reward and the held-out headline metric over epochs."""
    plot_rewards(out / METRICS, out / "reward.png", headline)


def eval_files(out: Path) -> list[Path]:
    """The run's held-out evaluations, eval/epoch_NNNN.json, in epoch order (the first is the base's when
    the run evaluated it)."""
    return sorted((out / EVAL).glob("epoch_*.json"))


def save_eval(out: Path, tag: str, metrics: dict) -> Path:
    """Write eval/<tag>.json; returns the eval folder (the caller writes <tag>.png there)."""
    folder = out / EVAL
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", folder / f"{tag}.json")
    return folder
