"""benchmarks/demo_seeds.py's table for any world: the headline, its SE gap, and the monitor only where
the world's evaluation has one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
demo_seeds = pytest.importorskip("demo_seeds")


def _result(headline: str, base: float, after: float, se: float, monitor: dict) -> dict:
    return {"headline": headline, "base": base, "after": after, "se": se, "wall_s": 60.0, "monitor": monitor}


def test_text_rows_have_no_monitor_column_and_the_gap_in_se():
    row = {
        "seed": 0,
        "run": _result("ocr/accuracy", 0.355, 0.392, 0.03, {}),
        "control": _result("ocr/accuracy", 0.355, 0.302, 0.04, {}),
    }
    header, line = demo_seeds._header(row), demo_seeds._line(row)
    assert "base ocr/accuracy" in header and "extra objects" not in header
    # gap 0.090 over hypot(0.03, 0.04) = 0.05: 1.8 SE
    assert "+0.090 (+1.8 SE)" in line and "+0.037" in line
    assert header.splitlines()[0].count("|") == line.count("|")


def test_shapes_rows_carry_the_monitor():
    monitor = {"monitor/extra_objects": [0.30, 0.24], "monitor/exact_scene": [0.46, 0.52]}
    row = {
        "seed": 1,
        "run": _result("overall/strict", 0.5, 0.6, 0.02, monitor),
        "control": _result("overall/strict", 0.5, 0.55, 0.02, {**monitor, "monitor/extra_objects": [0.30, 0.33]}),
    }
    header, line = demo_seeds._header(row), demo_seeds._line(row)
    assert "extra objects" in header and "0.30 -> 0.24 / 0.33" in line
    assert header.splitlines()[0].count("|") == line.count("|")


def _fake_train(calls: list):
    """Stands in for vgpo.train.train: records how it was called and writes a base and a final evaluation."""

    def train(cfg, hooks=None, resume=False, overwrite=False):
        out = Path(cfg.out)
        calls.append({"kind": out.name.split("-")[0], "resume": resume, "overwrite": overwrite, "hooks": hooks})
        for epoch, acc in ((0, 0.35), (cfg.epochs, 0.40)):
            path = out / "eval" / f"epoch_{epoch:04d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f'{{"ocr/accuracy": {acc}, "ocr/accuracy_se": 0.02}}')
        return out

    return train


def test_resume_continues_a_killed_run_and_leaves_its_wall_time_unknown(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(demo_seeds, "train", _fake_train(calls))
    killed = tmp_path / "control-seed0" / "checkpoint"
    killed.mkdir(parents=True)
    (killed / "state.json").write_text('{"epoch": 20}')
    (killed.parent / demo_seeds.WALL_FILE).write_text("123.0\n")  # left by an earlier, finished run
    config = Path(__file__).resolve().parent.parent / "configs" / "text-nft-vgpo.yaml"
    argv = ["demo_seeds.py", "--config", str(config), "--seeds", "0", "--set", "epochs=2", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    demo_seeds.main()
    by_kind = {c["kind"]: c for c in calls}
    # the run had no checkpoint: trained afresh and timed; the killed control continued, with its hooks
    assert by_kind["run"]["resume"] is False and by_kind["run"]["overwrite"] is True
    assert by_kind["control"]["resume"] is True and by_kind["control"]["overwrite"] is False
    assert by_kind["control"]["hooks"] is not None and by_kind["run"]["hooks"] is None
    assert (tmp_path / "run-seed0" / demo_seeds.WALL_FILE).exists()
    assert not (tmp_path / "control-seed0" / demo_seeds.WALL_FILE).exists()
    table = (tmp_path / "demo_seeds.md").read_text()
    assert "n/a" in table and "0.400 ± 0.020" in table
