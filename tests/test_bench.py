"""vgpo bench: a micro-suite end to end (schema, report, plots, resumability) and the maths it reports."""

import argparse
import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vgpo.bench.cli import add_commands
from vgpo.bench.quality import projection_accuracy, train_encoder
from vgpo.bench.runner import run_suite, stratified_subset
from vgpo.bench.schema import field_names, validate
from vgpo.bench.stats import (
    efficiency_ratio,
    epochs_to_reach,
    frechet_distance,
    gradient_signal_noise,
    rankdata,
    spearman,
    within_group_diversity,
)
from vgpo.bench.suites import Suite, Sweep, TaskSpec, expand, get_suite, select
from vgpo.errors import VgpoError
from vgpo.sampling import Trajectory
from vgpo.worlds import get_world

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "SCHEMA.md"
MICRO = dict(
    reward="brightness",
    epochs=2,
    prompts_per_epoch=2,
    group_size=4,
    sample_batch_size=8,
    train_batch_size=4,
    gradient_accumulation=2,
    num_steps=3,
    guidance_scale=2.0,
    lr=1e-3,
    clip_range=0.2,
    eval_every=1,
    eval_num_steps=2,
    eval_images_per_prompt=1,
    save_every=1,
    ema_decay=0.5,
)


def _micro_suite(ckpt, encoder) -> Suite:
    task = TaskSpec(
        name="shapes",
        world="shapes",
        checkpoint=str(ckpt),
        overrides=dict(MICRO),
        encoder=str(encoder),
        eval_prompts=6,
        metrics=("overall/partial",),
        algorithms=("grpo", "vgpo"),
        seeds=(0,),
        sweeps=(Sweep("tcrm_every", (1, 2), "vgpo", (0,), "cost"),),
        projection_prompts=3,
        projection_group=2,
    )
    return Suite("micro", "test suite", 1.0, (task,), "nothing tuned")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("bench")
    encoder = train_encoder(
        "shapes", root / "encoder", steps=5, batch_size=16, renders=48, threads=1, log=lambda s: None
    )
    suite = _micro_suite(tiny_checkpoint, encoder)
    out = root / "out"
    first = run_suite(suite, out, threads=1, command="vgpo bench --suite micro", log=lambda s: None)
    return suite, out, first


def test_micro_suite_writes_schema_conforming_results_report_and_plots(bench):
    _, out, first = bench
    assert sorted(first.ran) == ["shapes/grpo/seed0", "shapes/vgpo+tcrm_every=2/seed0", "shapes/vgpo/seed0"]
    assert not first.failed
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    assert all(r["status"] == "done" and r["quality"] is not None for r in results["runs"])
    task = results["tasks"]["shapes"]
    assert task["eval_epochs"] == [0, 1, 2] and task["eval_prompts"] == 6
    # tcrm_every=1 is the main VGPO run: the sweep point reuses it instead of training it again.
    assert task["sweeps"]["tcrm_every"]["points"][0]["runs"] == ["shapes/vgpo/seed0"]
    assert [p["reward_images"]["mean"] for p in task["sweeps"]["tcrm_every"]["points"]] == [24, 16]
    assert set(task["projection"]) == {"base", "grpo/seed0", "vgpo/seed0"}
    assert len(task["projection"]["base"]["pooled"]) == MICRO["num_steps"]
    assert task["algorithms"]["vgpo"]["tcrm_profile"]["steps"] == [0, 1, 2]
    assert task["algorithms"]["grpo"]["tcrm_profile"] is None
    assert task["comparisons"]["vgpo"]["reward_images_ratio"] == pytest.approx(3.0)
    assert task["base"]["quality"]["fd"] >= 0 and task["base"]["reference"]["fd_floor"] >= 0
    assert (
        "overall/strict" in task["algorithms"]["grpo"]["final"]
        and "counting/partial" in task["algorithms"]["grpo"]["final"]
    )

    md = (out / "BENCHMARKS.md").read_text()
    for needle in (
        "vgpo bench --suite micro",
        "Commit:",
        "Machine:",
        "Wall time:",
        "Where VGPO does not beat Flow-GRPO",
        "Sample efficiency",
        "Overhead",
        "Projection accuracy",
        "Sweep `tcrm_every`",
    ):
        assert needle in md, needle
    for name in ("heldout", "reward_std", "tcrm_profile", "projection", "overhead", "sweeps", "quality"):
        png = out / f"{name}_shapes.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name


def test_second_invocation_reruns_nothing_and_a_killed_run_resumes(bench, monkeypatch):
    suite, out, _ = bench
    metrics = sorted(out.glob("runs/*/*/*/metrics.jsonl"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    again = run_suite(suite, out, threads=1, command="again", log=lambda s: None)
    assert again.ran == [] and again.resumed == [] and len(again.skipped) == 3
    assert {p: p.stat().st_mtime_ns for p in metrics} == before

    # A run killed after its last checkpoint but before the marker: resumed via train(resume=True).
    from vgpo.bench import runner

    calls = []
    real_train = runner.train
    monkeypatch.setattr(
        runner, "train", lambda cfg, resume=False: calls.append(resume) or real_train(cfg, resume=resume)
    )
    (out / "runs/shapes/grpo/seed0/bench_done.json").unlink()
    third = run_suite(suite, out, threads=1, only=["shapes/grpo"], command="resume", log=lambda s: None)
    assert third.resumed == ["shapes/grpo/seed0"] and third.ran == [] and calls == [True]
    epochs = [json.loads(ln)["epoch"] for ln in (out / "runs/shapes/grpo/seed0/metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert validate(json.loads((out / "results.json").read_text())) == []

    # A field added to TrainConfig after a run finished counts as its default: the run is still done.
    marker = out / "runs/shapes/vgpo/seed0/bench_done.json"
    done = json.loads(marker.read_text())
    assert done["config"].pop("shared_init_noise") is False
    marker.write_text(json.dumps(done))
    assert run_suite(suite, out, threads=1, only=["shapes/vgpo"], log=lambda s: None).skipped == ["shapes/vgpo/seed0"]

    # A finished run is never overwritten by a suite whose config for it changed.
    changed = dataclasses.replace(suite, tasks=(dataclasses.replace(suite.tasks[0], overrides={**MICRO, "lr": 0.5}),))
    with pytest.raises(VgpoError, match="another config"):
        run_suite(changed, out, threads=1, only=["shapes/grpo"], log=lambda s: None)


def test_parallel_jobs_give_the_serial_runs_numbers(bench, tmp_path):
    """--jobs 2 trains the runs in two worker processes; every run's metrics, held-out curve and quality
    equal the serial suite's (both single-threaded), and the report covers the same runs."""
    suite, serial_out, _ = bench
    out = tmp_path / "parallel"
    outcome = run_suite(suite, out, threads=1, jobs=2, command="parallel", log=lambda s: None)
    assert sorted(outcome.ran) == ["shapes/grpo/seed0", "shapes/vgpo+tcrm_every=2/seed0", "shapes/vgpo/seed0"]
    assert not outcome.failed

    def rows(root, run):
        drop = ("time/", "charts/samples_per_s", "perf/peak_rss")  # wall-clock and memory
        return [
            {k: v for k, v in json.loads(ln).items() if not k.startswith(drop)}
            for ln in (root / "runs/shapes" / run / "metrics.jsonl").read_text().splitlines()
        ]

    for run in ("grpo/seed0", "vgpo/seed0", "vgpo+tcrm_every=2/seed0"):
        assert rows(out, run) == rows(serial_out, run), run
        assert (out / "logs" / f"shapes__{run.replace('/', '__')}.log").is_file()
    serial = json.loads((serial_out / "results.json").read_text())
    parallel = json.loads((out / "results.json").read_text())
    assert validate(parallel) == []
    assert {r["id"]: (r["eval"], r["quality"]) for r in parallel["runs"]} == {
        r["id"]: (r["eval"], r["quality"]) for r in serial["runs"]
    }
    assert parallel["tasks"]["shapes"]["projection"] == serial["tasks"]["shapes"]["projection"]
    assert parallel["jobs"] == 2 and parallel["rebuilt"] is None
    md = (out / "BENCHMARKS.md").read_text()
    assert "2 runs side by side" in md and "Tuning: nothing tuned" in md and "Report rebuilt" not in md

    # A report-only rebuild keeps the invocation that ran the suite and names itself.
    run_suite(suite, out, report_only=True, command="rebuild", log=lambda s: None)
    rebuilt = json.loads((out / "results.json").read_text())
    assert validate(rebuilt) == []
    assert (rebuilt["command"], rebuilt["jobs"], rebuilt["created"]) == ("parallel", 2, parallel["created"])
    assert rebuilt["rebuilt"]["command"] == "rebuild" and rebuilt["tasks"] == parallel["tasks"]
    assert "Report rebuilt from the finished runs by `rebuild`" in (out / "BENCHMARKS.md").read_text()
    with pytest.raises(VgpoError, match="--jobs"):
        run_suite(suite, out, jobs=0, log=lambda s: None)


def test_schema_document_names_every_field():
    doc = SCHEMA_DOC.read_text()
    named = set(re.findall(r"`([a-z_]+)`", doc)) | set(re.findall(r"[{,] ?([a-z_]+)", doc))
    missing = sorted(field_names() - named)
    assert not missing, f"fields of vgpo.bench.schema missing from {SCHEMA_DOC.name}: {missing}"


def test_validate_reports_departures():
    assert validate({"mean": 1.0, "std": None, "n": 2}, {"mean": float, "std": type(None), "n": int}) == []
    errors = validate({"schema": "other"})
    assert any("schema" in e for e in errors) and any("missing key 'runs'" in e for e in errors)


# --------------------------------------------------------------------------------------------------
# Maths
# --------------------------------------------------------------------------------------------------
def test_frechet_distance_is_zero_for_identical_sets_and_matches_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 0.1) > 0
    mu = np.array([1.0, -2.0, 0.5, 0.0])
    x, y = rng.normal(size=(40000, 4)), rng.normal(size=(40000, 4)) + mu
    assert frechet_distance(x, y) == pytest.approx(float(mu @ mu), rel=0.02)  # |mu|^2 = 5.25
    # Covariances differ: N(0, I) vs N(0, 4I) in d dims gives d * (1 + 4 - 2*2) = d.
    z = rng.normal(size=(40000, 4)) * 2.0
    assert frechet_distance(x, z) == pytest.approx(4.0, rel=0.03)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in (2, 5, 40):
        a, b = rng.normal(size=n), rng.normal(size=n)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        ta, tb = rng.integers(0, 3, size=n).astype(float), rng.integers(0, 4, size=n).astype(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on a constant input (and returns nan)
            expected = stats.spearmanr(ta, tb).statistic
        got = spearman(ta, tb)
        assert (got is None and np.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
        assert np.allclose(rankdata(ta), stats.rankdata(ta))
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_within_group_diversity():
    feats = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    assert within_group_diversity(feats, [0, 0, 1, 1, 2]) == pytest.approx((5.0 + 0.0) / 2)
    assert within_group_diversity(feats[:1], [0]) is None


def test_gradient_signal_noise_recovers_a_planted_signal_and_finds_none_in_pure_noise():
    rng = np.random.default_rng(0)
    dim, k = 20_000, 12
    signal = rng.normal(size=dim) * 0.5  # |s|^2 = 0.25 * dim
    noisy = [signal + rng.normal(size=dim) for _ in range(k)]  # noise E|n|^2 = dim
    stats = gradient_signal_noise(noisy)
    assert stats["signal"] == pytest.approx(float(signal @ signal), rel=0.05)
    assert stats["noise"] == pytest.approx(dim, rel=0.05)
    assert stats["snr"] == pytest.approx(0.25, rel=0.1)
    assert stats["cos"] == pytest.approx(0.2, abs=0.02)  # |s|^2 / (|s|^2 + E|n|^2)
    pure = gradient_signal_noise([rng.normal(size=dim) for _ in range(k)])
    assert abs(pure["signal"]) < 3 * pure["signal_se"] and abs(pure["snr"]) < 0.03
    with pytest.raises(ValueError, match="at least 3"):
        gradient_signal_noise(noisy[:2])


def test_gain_over_base_is_paired_by_seed():
    from vgpo.bench.summary import paired_gain

    def rec(base, final):
        return {"config": {"epochs": 8}, "eval": {"epochs": [0, 4, 8], "metrics": {"s": [base, 0.0, final]}}}

    # The bases differ a lot between seeds (their eval noise), the gains hardly: paired, that is a clear gain.
    clear = paired_gain([rec(0.50, 0.60), rec(0.70, 0.81), rec(0.60, 0.69)], "s")
    assert clear["verdict"] == "better" and clear["delta"] == pytest.approx(0.10) and clear["n"] == 3
    noise = paired_gain([rec(0.5, 0.55), rec(0.5, 0.45), rec(0.5, 0.5)], "s")
    assert noise["verdict"] == "within_noise" and noise["delta"] == pytest.approx(0.0, abs=1e-12)
    assert paired_gain([rec(0.5, 0.6)], "s")["verdict"] == "untested"
    unfinished = {"config": {"epochs": 8}, "eval": {"epochs": [0, 4], "metrics": {"s": [0.5, 0.6]}}}
    assert paired_gain([unfinished], "s")["verdict"] == "no_result"


def test_sample_efficiency_on_hand_made_curves():
    epochs = [0, 4, 8, 12]
    # Crosses 0.5 between epoch 4 (0.4) and 8 (0.6): interpolated at 6.
    assert epochs_to_reach(epochs, [0.2, 0.4, 0.6, 0.7], 0.5)["epochs"] == pytest.approx(6.0)
    assert epochs_to_reach(epochs, [0.2, 0.4, 0.6, 0.7], 0.5, interpolate=False)["epochs"] == 8
    assert epochs_to_reach(epochs, [0.6, 0.4, 0.6, 0.7], 0.5)["epochs"] == 0  # already there at the base
    assert epochs_to_reach(epochs, [0.2, 0.4, 0.5, 0.45], 0.5)["epochs"] == pytest.approx(8.0)  # first crossing counts
    never = epochs_to_reach(epochs, [0.2, 0.3, 0.3, 0.4], 0.5)
    assert never == {"epochs": None, "censored": True, "bound": 12.0, "text": ">12"}

    grpo = epochs_to_reach(epochs, [0.2, 0.3, 0.4, 0.5], 0.5)
    assert grpo["epochs"] == 12
    vgpo = epochs_to_reach(epochs, [0.2, 0.4, 0.6, 0.7], 0.5)
    assert efficiency_ratio(vgpo, grpo)["ratio"] == pytest.approx(0.5)
    censored = efficiency_ratio(never, epochs_to_reach([0, 4, 8], [0.2, 0.5, 0.5], 0.5))
    assert censored["ratio"] is None and censored["censored"] and censored["bound"] == pytest.approx(3.0)
    assert censored["text"] == ">3.00"
    assert efficiency_ratio(vgpo, epochs_to_reach(epochs, [0.5] * 4, 0.5))["ratio"] is None  # GRPO at target at epoch 0


def test_projection_accuracy_per_step():
    # Step 0's projection is the final image in reverse order of brightness, step 1's is the final image.
    B, T = 6, 2
    final = torch.linspace(-0.9, 0.9, B).view(B, 1, 1, 1).expand(B, 3, 2, 2)
    x0_hat = torch.stack([final.flip(0), final], dim=1)
    traj = Trajectory(
        sigmas=torch.tensor([1.0, 0.5, 0.0]),
        states=torch.stack([final, final, final], dim=1),
        log_probs=torch.zeros(B, T),
        x0_hat=x0_hat,
    )
    brightness = lambda images, prompts, metas: images.mean(dim=(1, 2, 3))
    decode = lambda x: (x + 1) / 2
    res = projection_accuracy(traj, decode, brightness, ["p"] * B, [{}] * B, group_ids=[0, 0, 0, 1, 1, 1])
    assert res["pooled"] == pytest.approx([-1.0, 1.0]) and res["within_group"] == pytest.approx([-1.0, 1.0])
    assert res["steps"] == [0, 1] and res["n_samples"] == B


# --------------------------------------------------------------------------------------------------
# Suites, filters, CLI
# --------------------------------------------------------------------------------------------------
def _budget(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("algorithm", "seed", "out", "tcrm_every", "adae_k", "gamma"):
        d.pop(k)
    return d


@pytest.mark.parametrize("name", ["quick", "full"])
def test_shipped_suites_expand_with_identical_budgets(name, tmp_path):
    suite = get_suite(name)
    plan = expand(suite, tmp_path)
    assert [t.name for t in suite.tasks] == ["shapes", "text"]
    checkpoints = {"shapes": "checkpoints/shapes-base", "text": "checkpoints/text-base"}
    for task in ("shapes", "text"):
        runs = plan.runs_of(task)
        main = [r for r in runs if not r.variant]
        assert {r.algorithm for r in main} == {"grpo", "vgpo", "tcrm", "adae"}
        assert all(r.config.checkpoint == checkpoints[task] and r.config.world == task for r in runs)
        budgets = {json.dumps(_budget(r.config), sort_keys=True) for r in runs}
        assert len(budgets) == 1  # every algorithm, seed and variant of a task trains under the same budget
        seeds = {a: sorted(r.seed for r in main if r.algorithm == a) for a in ("grpo", "vgpo", "tcrm", "adae")}
        assert all(len(s) == (1 if name == "quick" else 3) for s in seeds.values()), seeds
        assert [p.value for p in plan.sweeps[task]["tcrm_every"]] == [1, 2, 5]
    sweeps = plan.sweeps["shapes"]
    assert set(sweeps) == {"tcrm_every", "adae_k", "gamma"}
    ks = [p.value for p in sweeps["adae_k"]]
    assert len(ks) >= 4 and min(ks) == 0 and max(ks) >= 10
    assert sweeps["adae_k"][0].runs[0].startswith("shapes/tcrm/")  # vgpo with k = 0 is the TCRM-only run
    assert {r.seed for r in plan.runs_of("shapes") if r.variant} == {0}
    # A sweep point at the preset's value is the main run, with every seed (gamma 0.9: 3 seeds in the full suite).
    assert len(next(p for p in sweeps["gamma"] if p.value == 0.9).runs) == (1 if name == "quick" else 3)
    assert set(plan.sweeps["text"]) == {"tcrm_every"}  # OCR is the expensive reward: the overhead question
    assert plan.runs_of("text")[0].config.reward == "ocr"


def test_only_filters(tmp_path):
    plan = expand(get_suite("full"), tmp_path)
    ids = lambda pats: sorted(r.id for r in select(plan.runs, pats))
    assert ids(["shapes/vgpo/0"]) == ["shapes/vgpo/seed0"]
    assert ids(["*/grpo/seed1", "shapes/adae/2"]) == ["shapes/adae/seed2", "shapes/grpo/seed1", "text/grpo/seed1"]
    assert len(ids(["shapes/grpo"])) == 3
    assert all(i.startswith("shapes/vgpo") for i in ids(["shapes/vgpo*"])) and len(ids(["shapes/vgpo*"])) > 3
    assert len(ids(["text/*/0"])) == 6  # 4 algorithms + 2 tcrm_every sweep points
    with pytest.raises(VgpoError, match="matches no run"):
        select(plan.runs, ["ocr"])


def test_stratified_subset_is_balanced_and_fixed():
    world = get_world("shapes")
    metas = world.load_prompts(world.test_file)
    sub = stratified_subset(metas, 24)
    assert len(sub) == 24 and sub == stratified_subset(metas, 24)
    tags = [m["tag"] for m in sub]
    assert all(tags.count(t) == 4 for t in set(tags)) and len(set(tags)) == 6
    assert len(stratified_subset(metas, 50)) == 50


def test_cli_registers_bench_and_train_encoder():
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--suite", "full", "--out", "x", "--only", "shapes/vgpo", "--only", "*/grpo"])
    assert args.suite == "full" and args.only == ["shapes/vgpo", "*/grpo"] and args.bench_command is None
    args = parser.parse_args(["bench", "train-encoder", "--world", "shapes", "--out", "enc", "--steps", "10"])
    assert args.bench_command == "train-encoder" and args.encoder_out == "enc" and args.steps == 10


def test_full_suite_lists_the_flow_matching_objectives_as_optional_rows(tmp_path):
    """nft and awm are expanded only on request, from their own presets (no CFG in rollouts) under the
    task's budget; the main rows are unchanged by them."""
    from vgpo.train.algorithms import describe

    suite = get_suite("full")
    plain, with_optional = expand(suite, tmp_path), expand(suite, tmp_path, optional=True)
    assert not {r.algorithm for r in plain.runs} & {"nft", "awm"}
    extra = [r for r in with_optional.runs if r.algorithm in ("nft", "awm")]
    assert sorted({(r.task, r.algorithm) for r in extra}) == [
        ("shapes", "awm"),
        ("shapes", "nft"),
        ("text", "awm"),
        ("text", "nft"),
    ]
    assert {r.id for r in plain.runs} <= {r.id for r in with_optional.runs}
    grpo = {r.task: r.config for r in plain.runs if r.algorithm == "grpo" and r.seed == 0}
    for r in extra:
        assert describe(r.config.parts) == f"ode+{r.algorithm}" and r.config.guidance_scale == 1.0
        assert all(
            getattr(r.config, k) == getattr(grpo[r.task], k)
            for k in ("epochs", "prompts_per_epoch", "group_size", "train_batch_size", "lr", "eval_num_steps")
        )
    assert not any(r.algorithm in ("nft", "awm") for r in expand(get_suite("quick"), tmp_path, optional=True).runs)
