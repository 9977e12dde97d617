"""The command line: one-line errors on bad input, pretraining resume, eval outputs."""

import json

import torch
from safetensors.torch import load_file

from vgpo.cli import main


def _run_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("vgpo: error: ") and "Traceback" not in err
    return err


def test_missing_checkpoint_is_one_line(capsys, tmp_path):
    err = _run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "nope")])
    assert "nope" in err and "config.json" in err


def test_malformed_prompt_file_names_file_and_line(capsys, tmp_path, tiny_checkpoint):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(
        '{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}\n'
        '{"tag": "single_object", "include": [{"class": "hexagon", "count": 1}], "prompt": "a photo of a hexagon"}\n'
    )
    err = _run_error(capsys, ["eval", "--checkpoint", str(tiny_checkpoint), "--prompts", str(bad)])
    assert "prompts.jsonl:2" in err and "hexagon" in err


def test_unknown_reward_and_bad_config_values_name_the_field(capsys, tmp_path, tiny_checkpoint):
    common = ["train", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "run")]
    assert "geneval-shapez" in _run_error(capsys, common + ["--reward", "geneval-shapez"])
    assert "lr" in _run_error(capsys, common + ["--lr", "fast"])
    assert "group_size" in _run_error(capsys, common + ["--set", "group_size=1"])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 2\nlerning_rate: 0.1\n")
    assert "lerning_rate" in _run_error(capsys, ["train", "--config", str(cfg)])
    cfg.write_text("epochs: [2\n")
    assert "cfg.yaml:" in _run_error(capsys, ["train", "--config", str(cfg)])


def test_pretrain_resume_equals_uninterrupted(tmp_path):
    common = ["pretrain", "--batch-size", "4", "--save-every", "2", "--warmup-steps", "2", "--threads", "1"]
    main(common + ["--steps", "4", "--out", str(tmp_path / "full")])
    main(common + ["--steps", "2", "--out", str(tmp_path / "part")])  # "killed" after step 2
    with (tmp_path / "part" / "log.jsonl").open("a") as log:  # rows flushed past the last save, half a row
        log.write('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
    main(common + ["--steps", "4", "--out", str(tmp_path / "part")])  # resumes from resume.pt
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "part" / "config.json").read_text())
    assert meta["model"] == "tiny" and meta["pretrain"]["completed_steps"] == 4
    rows = [json.loads(ln) for ln in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[2]["loss"] != 1.0
    timing = json.loads((tmp_path / "part" / "pretrain_time.json").read_text())
    assert timing["invocations"] == 2 and timing["wall_s"] >= meta["pretrain"]["wall_s"] >= 0


def test_eval_writes_table_json_and_grid(capsys, tmp_path, tiny_checkpoint):
    out_json, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tiny_checkpoint),
                "--steps",
                "2",
                "--limit",
                "6",
                "--images-per-prompt",
                "1",
                "--json",
                str(out_json),
                "--grid",
                str(grid),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "overall" in printed and "single_object" in printed
    payload = json.loads(out_json.read_text())
    assert payload["images"] == 6 and 0.0 <= payload["metrics"]["overall/strict"] <= 1.0
    assert grid.stat().st_size > 0


def test_demo_writes_a_report_with_the_gain_and_its_standard_errors(capsys, tmp_path, tiny_checkpoint, monkeypatch):
    import yaml

    from conftest import TINY_RUN
    from vgpo.train import cli as train_cli

    preset = tmp_path / "demo.yaml"
    preset.write_text(yaml.safe_dump({**TINY_RUN, "checkpoint": str(tiny_checkpoint), "epochs": 1, "eval_base": True}))
    monkeypatch.setattr(train_cli, "DEMO_PRESET", preset)
    main(["demo", "--out", str(tmp_path / "demo")])
    report = (tmp_path / "demo" / "report" / "REPORT.md").read_text()
    first, gain = report.splitlines()[0], report.splitlines()[2]
    assert first.startswith("# vgpo demo: sde+ppo+tcrm+adae on shapes, 1 epochs")
    assert gain.startswith("Held-out overall/strict: ") and "1 SE of each score" in gain
    assert {p.name for p in (tmp_path / "demo" / "report").iterdir()} == {
        "REPORT.md",
        "before.png",
        "after.png",
        "reward.png",
    }
    assert "report:" in capsys.readouterr().out
