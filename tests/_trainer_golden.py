"""A fingerprint of short training runs, recorded before the trainer became a composition of sampler,
advantage and objective (tests/data/trainer_golden.json); test_trainer_golden.py asserts the current
trainer reproduces it.

The fingerprint belongs to a host kind: CPU kernels round reductions differently per instruction set,
and Adam turns the rounding noise in near-zero gradients (a few small biases) into steps of size lr, so
two hosts differ by far more than the test's 1e-5 (up to 20% on those biases after 2 epochs). The file
holds one record per host key (`host_key()`: ATen's CPU capability, the CPU vendor and, on Intel, AMX), each made by the
pre-refactor trainer (commit 5125fd3) on that host:

    git worktree add /tmp/pre-refactor 5125fd3
    (cd /tmp/pre-refactor && PYTHONPATH=src:tests python tests/_trainer_golden.py /tmp/recorded.json)
    PYTHONPATH=src python tests/_trainer_golden.py --add /tmp/recorded.json   # files it under this host

Regenerate a record only on a deliberate change of results.
"""

from __future__ import annotations

import json
import platform
import sys
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


GOLDEN_FILE = Path(__file__).parent / "data" / "trainer_golden.json"


def host_key() -> str:
    """What decides the bits of a float32 run on CPU: ATen's kernel set and the vendor (MKL and oneDNN pick
    their code paths by it), and on Intel whether the CPU has AMX (oneDNN dispatches differently there: on
    an AMX Xeon the pre-refactor trainer differs from the "AVX512/GenuineIntel" record by up to 41% on a
    near-zero bias), e.g. "AVX512/GenuineIntel/AMX". On AMD with AVX-512 the family too: Zen 4 (25) runs
    512-bit instructions on 256-bit units and Zen 5 (26) does not, and whether oneDNN blocks their kernels
    alike is untested, so each keeps its own record ("AVX512/AuthenticAMD/family25")."""
    import torch

    from vgpo.perf import cpu_flags, cpuinfo_field

    capability = torch.backends.cpu.get_cpu_capability()
    vendor = cpuinfo_field("vendor_id") or platform.processor() or platform.machine()
    amx = "/AMX" if "amx_tile" in cpu_flags() else ""
    family = f"/family{cpuinfo_field('cpu family')}" if vendor == "AuthenticAMD" and capability == "AVX512" else ""
    return f"{capability}/{vendor}{amx}{family}"


def add(recorded: str) -> None:
    """File a record made by the pre-refactor trainer under this host's key."""
    golden = json.loads(GOLDEN_FILE.read_text())
    record = json.loads(Path(recorded).read_text())
    if set(record) != set(CASES):
        raise SystemExit(f"{recorded}: cases {sorted(record)}, expected {sorted(CASES)}")
    if host_key() in golden:
        print(f"{GOLDEN_FILE}: replacing the record of {host_key()}")
    golden[host_key()] = record
    GOLDEN_FILE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"{GOLDEN_FILE}: recorded {host_key()}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--add"] or len(sys.argv) != 3:
        raise SystemExit("usage: python tests/_trainer_golden.py --add RECORDED.json (see the docstring)")
    add(sys.argv[2])
