"""benchmarks/sample_efficiency.py: samples a recipe's held-out curve needs to reach another recipe's final score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sample_efficiency  # noqa: E402
from paired_recipes import PairingError  # noqa: E402

HEADLINE = "overall/strict"


def _folder(tmp_path: Path, name: str, preset: dict, runs: dict[int, dict]) -> Path:
    """A demo_seeds.py --kinds run folder: demo_seeds.json, and per seed run-seed<S>/ with its evaluations
    (epoch -> score) and each epoch's training seconds."""
    folder = tmp_path / name
    rows = []
    for seed, run in runs.items():
        evals = run["evals"]
        (folder / f"run-seed{seed}" / "eval").mkdir(parents=True)
        for epoch, score in evals.items():
            (folder / f"run-seed{seed}" / "eval" / f"epoch_{epoch:04d}.json").write_text(json.dumps({HEADLINE: score}))
        lines = [json.dumps({"epoch": e, "time/epoch_s": run["epoch_s"]}) for e in range(preset["epochs"])]
        (folder / f"run-seed{seed}" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        first, last = evals[min(evals)], evals[max(evals)]
        result = {"headline": HEADLINE, "base": first, "after": last, "se": 0.02, "final": {HEADLINE: last}}
        rows.append({"seed": seed, "run": result})
    (folder / "demo_seeds.json").write_text(json.dumps({"preset": preset, "rows": rows}))
    return folder


CURVE_PRESET = {"prompts_per_epoch": 4, "group_size": 24, "epochs": 40}  # 96 samples an epoch, 3,840 in all
REF_PRESET = {"prompts_per_epoch": 8, "group_size": 16, "epochs": 30}  # 3,840 samples


def _worlds(tmp_path: Path) -> tuple[Path, Path]:
    curves = _folder(
        tmp_path,
        "curves",
        CURVE_PRESET,
        {
            0: {"evals": {0: 0.60, 8: 0.62, 16: 0.66, 24: 0.66, 32: 0.64, 40: 0.67}, "epoch_s": 10.0},
            1: {"evals": {0: 0.50, 8: 0.51, 16: 0.52, 24: 0.53, 32: 0.52, 40: 0.54}, "epoch_s": 10.0},
        },
    )
    # the reference gains +0.04, +0.06 and +0.05 on seeds 0-2: mean +0.05 (seed 2 has no curve to pair with, but
    # its gain is part of the target)
    ref = _folder(
        tmp_path,
        "ref",
        REF_PRESET,
        {
            0: {"evals": {0: 0.60, 30: 0.64}, "epoch_s": 20.0},
            1: {"evals": {0: 0.50, 30: 0.56}, "epoch_s": 20.0},
            2: {"evals": {0: 0.70, 30: 0.75}, "epoch_s": 20.0},
        },
    )
    return curves, ref


def test_samples_to_reach_the_references_mean_final_and_its_paired_final(tmp_path):
    out, info = sample_efficiency.rows(*_worlds(tmp_path), gains=[0.10])
    assert info["ref_gain"] == pytest.approx(0.05) and info["ref_seeds"] == [0, 1, 2]
    assert info["ref_samples"] == 3840 and info["per_epoch"] == 96
    assert [row["seed"] for row in out] == [0, 1]
    seed0, seed1 = out
    # seed 0: target 0.60 + 0.05 = 0.65, first met at epoch 16 (1,536 samples); the line from (8, 0.62) to
    # (16, 0.66) crosses it at epoch 14 (1,344 samples); 16 epochs of 10 s against the reference's 30 of 20 s
    mean = seed0["reach"]["mean"]
    assert mean["target"] == pytest.approx(0.65) and mean["samples"] == 1536
    assert mean["interpolated"] == pytest.approx(1344) and mean["seconds"] == pytest.approx(160)
    assert seed0["ref_seconds"] == pytest.approx(600)
    assert seed0["reach"]["paired"]["target"] == pytest.approx(0.64) and seed0["reach"]["paired"]["samples"] == 1536
    # seed 1 never reaches 0.55 (paired: 0.56), nor does seed 0 reach base + 0.10: censored at the budget
    for r in (seed1["reach"]["mean"], seed1["reach"]["paired"], seed0["reach"]["+0.10"]):
        assert r["samples"] is None and r["bound"] == 3840 and r["seconds"] is None
    text = sample_efficiency.table(out, info, ("demo", "grpo")).splitlines()
    assert "0.650: 1,536 (1,344) | 2.50 | 160 / 600" in text[2]
    assert "0.550: >3,840 | <1.00 | n/a" in text[3]
    assert "0: 0.600, 768: 0.620, 1,536: 0.660" in text[2]
    assert all(line.count("|") == text[0].count("|") for line in text[:4])
    assert "mean gain +0.050 over seeds 0, 1, 2" in text[5]


def test_a_missing_curve_another_final_or_a_broken_metrics_line_is_a_one_line_error(tmp_path):
    curves, ref = _worlds(tmp_path)
    with pytest.raises(PairingError, match="run-seed0: 2 evaluations; a curve needs"):
        sample_efficiency.rows(ref, ref, gains=[])  # the reference evaluated only before and after: no curve
    (curves / "run-seed0" / "eval" / "epoch_0040.json").write_text(json.dumps({HEADLINE: 0.70}))
    with pytest.raises(PairingError, match="seed 0: the curve's last point"):
        sample_efficiency.rows(curves, ref, gains=[])
    (curves / "run-seed0" / "eval" / "epoch_0040.json").write_text(json.dumps({HEADLINE: 0.67}))
    with (curves / "run-seed1" / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 40, "time/epo\n')  # a line cut short, as a killed writer leaves it
    with pytest.raises(PairingError, match=r"run-seed1/metrics.jsonl, line 41: not JSON"):
        sample_efficiency.rows(curves, ref, gains=[])
