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
