"""A fingerprint of short training runs, recorded before the trainer became a composition of sampler,
advantage and objective (tests/data/trainer_golden.json); test_trainer_golden.py asserts the current
trainer reproduces it. Regenerate only on a deliberate change of results:

    PYTHONPATH=src python tests/_trainer_golden.py tests/data/trainer_golden.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from conftest import TINY_RUN

# The runs: the tiny random model of conftest.py, 2 epochs, CFG in rollouts and update, KL on.
BASE = dict(TINY_RUN, epochs=2, save_every=2, ema_decay=0.5, beta=0.04)
CASES = {
    "grpo": dict(algorithm="grpo"),
    "vgpo": dict(algorithm="vgpo"),
    "vgpo_window": dict(algorithm="vgpo", sde_steps=2, timestep_fraction=1.0, beta=0.0),
}
METRICS = ("reward/mean", "adv/abs_mean", "losses/policy", "losses/kl", "losses/approx_kl", "losses/grad_norm")


def fingerprint(out: Path) -> dict:
    """Per-tensor sum and norm of the final trainable and EMA weights, and per-epoch metrics."""
    ckpt = Path(out) / "checkpoint"
    weights = {}
    for name, path in (("trainable", ckpt / "trainable.safetensors"), ("ema", ckpt / "ema.safetensors")):
        for k, v in sorted(load_file(str(path)).items()):
            weights[f"{name}/{k}"] = [v.double().sum().item(), v.double().norm().item()]
    rows = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln]
    metrics = {f"{r['epoch']}/{k}": r[k] for r in rows for k in METRICS if k in r}
    return {"weights": weights, "metrics": metrics}


def run_case(checkpoint: Path, out: Path, extra: dict) -> dict:
    from vgpo.config import from_dict
    from vgpo.train import TrainConfig, train

    cfg = from_dict(TrainConfig, {**BASE, **extra, "checkpoint": str(checkpoint), "out": str(out)})
    return fingerprint(train(cfg))


def main(path: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import _random_tiny

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _random_tiny("shapes", (16, 16), Path(tmp) / "tiny")
        golden = {name: run_case(ckpt, Path(tmp) / name, extra) for name, extra in CASES.items()}
    Path(path).write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
