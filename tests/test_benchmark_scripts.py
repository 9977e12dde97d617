"""Every benchmark script still imports and parses its own --help: the library moves under them, and a
script that no longer runs is found here, not when a measurement is due (benchmarks/latent_speed.py had
imported a helper of epoch_speed.py that was gone, and could not run)."""

from __future__ import annotations

import importlib
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
