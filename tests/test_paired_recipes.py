"""benchmarks/paired_recipes.py: two recipes' demo_seeds.py folders compared seed by seed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import paired_recipes  # noqa: E402


def _shapes_run(base: float, after: float, se: float, extra: tuple[float, float], counting: float) -> dict:
    final = {
        "overall/strict": after,
        "counting/strict": counting,
        "position/strict": 0.3,
        "monitor/extra_objects": extra[1],
    }
    return {
        "headline": "overall/strict",
        "base": base,
        "after": after,
        "se": se,
        "final": final,
        "monitor": {"monitor/extra_objects": list(extra)},
    }


def _folder(tmp_path: Path, name: str, runs: dict[int, dict]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    rows = [{"seed": seed, "run": run} for seed, run in runs.items()]
    (folder / "demo_seeds.json").write_text(json.dumps({"preset": {}, "rows": rows}))
    return folder


def test_difference_in_se_mean_over_seeds_and_tags(tmp_path):
    a = _folder(
        tmp_path,
        "a",
        {0: _shapes_run(0.6, 0.66, 0.03, (0.3, 0.2), 0.5), 1: _shapes_run(0.5, 0.58, 0.03, (0.3, 0.1), 0.7)},
    )
    b = _folder(
        tmp_path,
        "b",
        {
            0: _shapes_run(0.6, 0.62, 0.04, (0.3, 0.25), 0.4),
            1: _shapes_run(0.5, 0.52, 0.04, (0.3, 0.2), 0.6),
            2: _shapes_run(0.7, 0.70, 0.04, (0.3, 0.2), 0.6),
        },
    )
    pairs = paired_recipes.pair(paired_recipes.load_runs(a), paired_recipes.load_runs(b))
    assert [p["seed"] for p in pairs] == [0, 1]  # seed 2 is only in b
    assert pairs[0]["diff"] == pytest.approx(0.04) and pairs[0]["diff_se"] == pytest.approx(0.05)
    text = paired_recipes.table(pairs, ("with", "without"))
    lines = text.splitlines()
    assert "+0.040 (+0.8 SE)" in lines[2] and "+0.060 (+1.2 SE)" in lines[3]
    assert "0.50 / 0.40" in lines[2] and "0.30 -> 0.20 / 0.25" in lines[2]
    # mean difference 0.05, its SE from the two seeds' spread: sd(0.04, 0.06) / sqrt(2) = 0.01
    assert "+0.050 ± 0.010 (SE over seeds)" in lines[4] and "(+0.070)" in lines[4] and "(+0.020)" in lines[4]
    assert all(line.count("|") == lines[0].count("|") for line in lines[:5])
    # t = 0.05 / 0.01 = 5 on 1 df (a Cauchy): two-sided p = 1 - (2/pi) atan(5) = 0.126
    assert lines[6] == "Paired t over 2 seeds: t = +5.00 (df 1), p = 0.126 two-sided."


def test_paired_t_matches_the_closed_form():
    # On 2 df Student's t has the closed form P(|T| > t) = 1 - t / sqrt(t^2 + 2); diffs 1, 2, 3 give t = 2 sqrt(3).
    t, p = paired_recipes.paired_t([1.0, 2.0, 3.0])
    assert t == pytest.approx(2 * math.sqrt(3))
    assert p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert paired_recipes.paired_t([-1.0, -2.0, -3.0]) == pytest.approx((-t, p))  # two-sided: the sign only flips t
    assert paired_recipes.paired_t([0.02]) is None and paired_recipes.paired_t([0.02, 0.02]) is None


def test_text_runs_have_no_tag_or_monitor_columns(tmp_path):
    run = {
        "headline": "ocr/accuracy",
        "base": 0.35,
        "after": 0.39,
        "se": 0.015,
        "final": {"ocr/accuracy": 0.39},
        "monitor": {},
    }
    a = _folder(tmp_path, "a", {0: run})
    b = _folder(tmp_path, "b", {0: {**run, "after": 0.36, "final": {"ocr/accuracy": 0.36}}})
    text = paired_recipes.table(
        paired_recipes.pair(paired_recipes.load_runs(a), paired_recipes.load_runs(b)), ("A", "B")
    )
    header = text.splitlines()[0]
    assert "extra objects" not in header and header.count("|") == 6  # seed, base, A, B, A - B: no tag columns
    assert "SE over seeds" not in text  # one seed: no spread to report


def test_unpaired_bases_and_missing_folders_are_named(tmp_path):
    a = _folder(tmp_path, "a", {3: _shapes_run(0.6, 0.66, 0.03, (0.3, 0.2), 0.5)})
    b = _folder(tmp_path, "b", {3: _shapes_run(0.61, 0.62, 0.04, (0.3, 0.25), 0.4)})
    with pytest.raises(paired_recipes.PairingError, match="seed 3: base scores differ"):
        paired_recipes.pair(paired_recipes.load_runs(a), paired_recipes.load_runs(b))
    c = _folder(tmp_path, "c", {4: _shapes_run(0.6, 0.66, 0.03, (0.3, 0.2), 0.5)})
    with pytest.raises(paired_recipes.PairingError, match="no seed in common"):
        paired_recipes.pair(paired_recipes.load_runs(a), paired_recipes.load_runs(c))
    with pytest.raises(paired_recipes.PairingError, match="demo_seeds.json: not found"):
        paired_recipes.load_runs(tmp_path / "nowhere")
