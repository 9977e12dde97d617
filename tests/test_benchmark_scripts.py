"""Every benchmark script still imports and parses its own --help: the library moves under them, and a
script that no longer runs is found here, not when a measurement is due (benchmarks/latent_speed.py had
imported a helper of epoch_speed.py that was gone, and could not run)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as the command line does


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_prints_its_help(name, monkeypatch, capsys):
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py: no main()"
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_script_is_listed():
    assert {"latent_speed", "epoch_speed", "network_speed", "demo_seeds"} <= set(SCRIPTS)


def test_same_run_ignores_timings_and_names_any_other_difference(tmp_path, monkeypatch, capsys):
    import same_run

    def run(name: str, reward: float, seconds: float, weights: bytes) -> Path:
        folder = tmp_path / name
        (folder / "eval").mkdir(parents=True)
        (folder / "checkpoint").mkdir()
        rows = [{"epoch": 0, "eval/overall/strict": 0.7}, {"epoch": 1, "reward/mean": reward, "time/epoch_s": seconds}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "eval" / "epoch_0000.json").write_text(json.dumps({"overall/strict": 0.7}))
        (folder / "checkpoint" / "trainable.safetensors").write_bytes(weights)
        return folder

    a, b = run("a", 0.5, 11.0, b"w"), run("b", 0.5, 9.0, b"w")
    monkeypatch.setattr(sys, "argv", ["same_run.py", str(a), str(b)])
    with pytest.raises(SystemExit) as exit_info:
        same_run.main()
    assert (
        exit_info.value.code == 0
        and "SAME: 2 metric rows, 1 evaluations, 1 checkpoint files" in capsys.readouterr().out
    )
    c = run("c", 0.5000001, 11.0, b"v")
    assert same_run.compare(a, c) == [
        "metrics.jsonl epoch 1: reward/mean 0.5 != 0.5000001",
        "checkpoint/trainable.safetensors differs",
    ]
