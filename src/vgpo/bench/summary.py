"""The numbers of a suite: per-run records read from the run folders, per-task/algorithm summaries and
the results document (``vgpo.bench.results.Results``; schema: docs/benchmarks/SCHEMA.md). The
markdown report is written from that document by ``vgpo.bench.markdown``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vgpo.train.run_folder import METRICS, eval_files
from vgpo.worlds import get_world

from . import quality as Q
from .results import SCHEMA_VERSION, Git, Machine, Rebuilt, Results, load
from .stats import (
    efficiency_ratio,
    epochs_to_reach,
    fmt_mean_std,
    mean_curve,
    mean_std,
    welch_se,
)
from .suites import Plan, RunPlan, TaskSpec

MARKER = "bench_done.json"  # written after train() returns
QUALITY_FILE = "bench_quality.json"
ERROR_FILE = "bench_error.txt"
TIME_KEYS = ("time/epoch_s", "time/rollout_s", "time/reward_s", "time/advantage_s", "time/update_s")
REFERENCE = "grpo"  # the baseline every algorithm is compared with (Flow-GRPO)


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------
def git_info() -> dict:
    # The commit of the code that ran: the repository holding this package (else the working directory's).
    where = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


# --------------------------------------------------------------------------------------------------
# Per-run records
# --------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            break
    return rows


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_evals(run_dir: Path, max_epoch: int) -> dict:
    """{"epochs": [...], "metrics": {key: [...]}} from eval/epoch_XXXX.json (sample counts "*/n" left out)."""
    files = []
    for path in eval_files(run_dir):
        m = re.fullmatch(r"epoch_(\d+)", path.stem)
        if m and int(m.group(1)) <= max_epoch:
            files.append((int(m.group(1)), json.loads(path.read_text())))
    keys = sorted({k for _, d in files for k, v in d.items() if not k.endswith("/n") and _num(v) is not None})
    return {"epochs": [e for e, _ in files], "metrics": {k: [_num(d.get(k)) for _, d in files] for k in keys}}


def read_curves(rows: list[dict]) -> dict:
    train = [r for r in rows if r.get("epoch", 0) >= 1]
    keys = sorted(
        {k for r in train for k, v in r.items() if k != "epoch" and not k.startswith("eval/") and _num(v) is not None}
    )
    return {"epoch": [r["epoch"] for r in train], "metrics": {k: [_num(r.get(k)) for r in train] for k in keys}}


def run_overhead(curves: dict) -> dict:
    """Per-epoch means of the time split and reward images; the first epoch (warm-up) is left out when
    there are at least 3."""
    n = len(curves["epoch"])
    skip = 1 if n >= 3 else 0
    out: dict = {"epochs_averaged": n - skip}
    for key in (*TIME_KEYS, "perf/reward_images"):
        vals = [v for v in curves["metrics"].get(key, [])[skip:] if v is not None]
        out[key.split("/")[1]] = sum(vals) / len(vals) if vals else None
    return out


def run_record(run: RunPlan, out: Path, headline: str, base_quality: dict | None) -> dict:
    marker = run.dir / MARKER
    done = json.loads(marker.read_text()) if marker.is_file() else None
    error = (run.dir / ERROR_FILE).read_text().strip().splitlines()[-1:] if (run.dir / ERROR_FILE).is_file() else []
    rows = _read_jsonl(run.dir / METRICS)
    status = "done" if done else ("failed" if error else ("incomplete" if rows else "missing"))
    curves = read_curves(rows)
    evals = read_evals(run.dir, run.config.epochs)
    quality = None
    qpath = run.dir / QUALITY_FILE
    if qpath.is_file() and done:
        quality = json.loads(qpath.read_text())
        scores = evals["metrics"].get(headline, [])
        delta = scores[-1] - scores[0] if len(scores) >= 2 and None not in (scores[0], scores[-1]) else None
        quality["score_delta"] = delta
        quality["flags"] = Q.quality_flags(delta, quality, base_quality)
    try:
        rel = str(run.dir.relative_to(out))
    except ValueError:
        rel = str(run.dir)
    return {
        "id": run.id,
        "task": run.task,
        "algorithm": run.algorithm,
        "variant": run.variant,
        "seed": run.seed,
        "dir": rel,
        "status": status,
        "config": dataclasses.asdict(run.config),
        "wall_s": done.get("wall_s") if done else None,
        "resumed": bool(done and done.get("resumed")),
        "curves": curves,
        "eval": evals,
        "overhead": run_overhead(curves),
        "quality": quality,
        "error": error[0] if error else None,
    }


# --------------------------------------------------------------------------------------------------
# Per-task summaries
# --------------------------------------------------------------------------------------------------
def _final(rec: dict, key: str) -> float | None:
    vals, epochs = rec["eval"]["metrics"].get(key, []), rec["eval"]["epochs"]
    return vals[-1] if vals and epochs and epochs[-1] == rec["config"]["epochs"] else None


def _curve(rec: dict, key: str, source: str = "eval") -> tuple[list, list]:
    if source == "eval":
        return rec["eval"]["epochs"], rec["eval"]["metrics"].get(key, [])
    return rec["curves"]["epoch"], rec["curves"]["metrics"].get(key, [])


def _mean_curve(recs: list[dict], key: str, source: str = "eval") -> dict:
    curves = [c for c in (_curve(r, key, source) for r in recs) if c[1]]
    epochs, means, stds = mean_curve(curves)
    return {"epochs": epochs, "mean": means, "std": stds}


def _tcrm_profile(recs: list[dict]) -> dict | None:
    keys = [k for k in recs[0]["curves"]["metrics"] if k.startswith("tcrm/q_")] if recs else []
    if not keys:
        return None
    steps = sorted(int(k.rsplit("_", 1)[1]) for k in keys)
    out: dict = {"steps": steps}
    for name in ("q", "omega"):
        for which, pick in (("", slice(None)), ("_first", slice(0, 1)), ("_last", slice(-1, None))):
            prof = []
            for i in steps:
                per_run = []
                for r in recs:
                    vals = [v for v in r["curves"]["metrics"].get(f"tcrm/{name}_{i}", [])[pick] if v is not None]
                    if vals:
                        per_run.append(sum(vals) / len(vals))
                prof.append(mean_std(per_run)["mean"])
            out[f"{name}{which}"] = prof
    return out


def _verdict(a: dict, b: dict) -> dict:
    if a["mean"] is None or b["mean"] is None:
        return {"delta": None, "se": None, "verdict": "no_result"}
    delta = a["mean"] - b["mean"]
    se = welch_se(a, b)
    if se is None:
        verdict = "equal" if delta == 0 else ("higher_untested" if delta > 0 else "lower_untested")
    elif se == 0:
        verdict = "equal" if delta == 0 else ("better" if delta > 0 else "worse")
    else:
        verdict = "better" if delta > 2 * se else ("worse" if delta < -2 * se else "within_noise")
    return {"delta": delta, "se": se, "verdict": verdict}


def paired_gain(recs: list[dict], key: str) -> dict:
    """Final minus epoch-0 ``key`` per run (the same seed, prompts and eval noise at both points), as
    {delta, se, n, verdict}: "better" when the mean gain exceeds 2 standard errors, "within_noise" when
    it does not, "untested" with fewer than 2 runs, "no_result" without any."""
    gains = []
    for rec in recs:
        epochs, values = _curve(rec, key)
        final = _final(rec, key)
        if final is not None and epochs[:1] == [0]:
            gains.append(final - values[0])
    stat = mean_std(gains)
    if stat["mean"] is None:
        return {"delta": None, "se": None, "n": 0, "verdict": "no_result"}
    if stat["std"] is None:
        return {"delta": stat["mean"], "se": None, "n": stat["n"], "verdict": "untested"}
    se = stat["std"] / math.sqrt(stat["n"])
    verdict = "better" if stat["mean"] > 2 * se else "within_noise"
    return {"delta": stat["mean"], "se": se, "n": stat["n"], "verdict": verdict}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def summarize_task(
    task: TaskSpec, plan: Plan, records: dict[str, dict], base_quality: dict | None, projection: dict | None
) -> dict:
    world = get_world(task.world)
    headline = world.headline
    metrics = [headline, *[m for m in task.metrics if m != headline]]
    runs = plan.runs_of(task.name)
    done = [records[r.id] for r in runs if records[r.id]["status"] == "done"]
    algorithms = [*task.algorithms, *[a for a in task.optional_algorithms if any(r.algorithm == a for r in runs)]]
    main = {
        a: [records[r.id] for r in runs if r.algorithm == a and not r.variant and records[r.id]["status"] == "done"]
        for a in algorithms
    }
    eval_keys = sorted({k for r in done for k in r["eval"]["metrics"]})

    # The base is evaluated at epoch 0 of every run with the run's seed: one value per seed.
    base_runs = list({r["seed"]: r for r in done if r["eval"]["epochs"][:1] == [0]}.values())
    base_eval = {
        k: mean_std(r["eval"]["metrics"][k][0] for r in base_runs if k in r["eval"]["metrics"]) for k in eval_keys
    }
    ref_recs = main.get(REFERENCE, [])
    target = mean_std(_final(r, headline) for r in ref_recs)["mean"] if ref_recs else None

    algos: dict = {}
    for algo, recs in main.items():
        held = {k: _mean_curve(recs, k) for k in eval_keys}
        curve = held.get(headline, {"epochs": [], "mean": []})
        reach = epochs_to_reach(curve["epochs"], curve["mean"], target) if target is not None else None
        per_seed = [epochs_to_reach(*_curve(r, headline), target) for r in recs] if target is not None else []
        div = {name: _mean_curve(recs, f"reward/{name}", "train") for name in ("group_std", "zero_std_frac")}
        flagged = [r["id"] for r in recs if r["quality"] and r["quality"]["flags"]]
        algos[algo] = {
            "runs": [r["id"] for r in recs],
            "seeds": [r["seed"] for r in recs],
            "held_out": {
                "epochs": curve["epochs"],
                "metrics": {k: {"mean": v["mean"], "std": v["std"]} for k, v in held.items()},
            },
            "final": {k: mean_std(_final(r, k) for r in recs) for k in eval_keys},
            "sample_efficiency": {"target": target, "mean_curve": reach, "per_seed": per_seed},
            "gain_over_base": paired_gain(recs, headline),
            "reward_diversity": {
                "epochs": div["group_std"]["epochs"],
                **{name: {"mean": d["mean"], "std": d["std"]} for name, d in div.items()},
                **{
                    f"{name}_avg": mean_std(_avg(r["curves"]["metrics"].get(f"reward/{name}", [])) for r in recs)
                    for name in div
                },
            },
            "overhead": {
                k: mean_std(r["overhead"][k] for r in recs)
                for k in ("epoch_s", "rollout_s", "reward_s", "advantage_s", "update_s", "reward_images")
            },
            "quality": {
                "fd": mean_std(r["quality"]["fd"] for r in recs if r["quality"]),
                "diversity": mean_std(r["quality"]["diversity"] for r in recs if r["quality"]),
                "flagged": flagged,
            },
            "tcrm_profile": _tcrm_profile(recs),
        }

    comparisons: dict = {}
    ref = algos.get(REFERENCE)
    for algo, s in algos.items():
        if algo == REFERENCE or ref is None:
            continue
        comparisons[algo] = {
            "final": {k: _verdict(s["final"][k], ref["final"][k]) for k in eval_keys if k in ref["final"]},
            "efficiency_ratio": efficiency_ratio(
                s["sample_efficiency"]["mean_curve"] or {}, ref["sample_efficiency"]["mean_curve"] or {}
            ),
            "epoch_time_ratio": _ratio(s["overhead"]["epoch_s"]["mean"], ref["overhead"]["epoch_s"]["mean"]),
            "reward_images_ratio": _ratio(
                s["overhead"]["reward_images"]["mean"], ref["overhead"]["reward_images"]["mean"]
            ),
        }

    sweeps: dict = {}
    spec = {s.param: s for s in task.sweeps}
    for param, points in plan.sweeps.get(task.name, {}).items():
        rows = []
        for p in points:
            recs = [records[i] for i in p.runs if records[i]["status"] == "done"]
            rows.append(
                {
                    "value": p.value,
                    "runs": p.runs,
                    "final": {k: mean_std(_final(r, k) for r in recs) for k in metrics},
                    "reward_images": mean_std(r["overhead"]["reward_images"] for r in recs),
                    "epoch_s": mean_std(r["overhead"]["epoch_s"] for r in recs),
                    "zero_std_frac": mean_std(
                        _avg(r["curves"]["metrics"].get("reward/zero_std_frac", [])) for r in recs
                    ),
                }
            )
        sweeps[param] = {"algorithm": spec[param].algorithm, "question": spec[param].question, "points": rows}

    summary = {
        "world": task.world,
        "checkpoint": task.checkpoint,
        "preset": task.preset,
        "headline": headline,
        "metrics": metrics,
        "budget": dict(task.overrides),
        "eval_prompts": _eval_prompt_count(task, runs),
        "eval_epochs": _eval_epochs(runs),
        "base": {
            "eval": base_eval,
            "quality": (base_quality or {}).get("base"),
            "reference": (base_quality or {}).get("reference"),
        },
        "algorithms": algos,
        "comparisons": comparisons,
        "sweeps": sweeps,
        "projection": projection,
    }
    summary["not_better"] = not_better_statements(summary)
    return summary


def _avg(values: Sequence) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _eval_epochs(runs: list[RunPlan]) -> list[int]:
    if not runs:
        return []
    cfg = runs[0].config
    points = [0] + [e for e in range(1, cfg.epochs + 1) if cfg.eval_every and e % cfg.eval_every == 0]
    return points if points[-1] == cfg.epochs else points + [cfg.epochs]


def _eval_prompt_count(task: TaskSpec, runs: list[RunPlan]) -> int | None:
    if not runs:
        return None
    cfg = runs[0].config
    path = Path(cfg.test_prompts) if cfg.test_prompts else get_world(task.world).test_file
    if not path.is_file():
        return task.eval_prompts or None
    n = len(get_world(task.world).load_prompts(path))
    return min(n, cfg.eval_limit) if cfg.eval_limit else n


def reference_gain_text(gain: dict) -> str:
    """Why an epochs-to-Flow-GRPO's-score figure means nothing when Flow-GRPO did not beat the base."""
    if gain["delta"] is None:
        return "Flow-GRPO has no final score to reach."
    spread = f" ± {gain['se']:.3f} (1 SE)" if gain["se"] is not None else " (1 seed: no error bar)"
    return (
        f"Flow-GRPO's final score is not above the base's beyond noise (gain {gain['delta']:+.3f}{spread}, "
        f"paired by seed), so reaching it says nothing about speed."
    )


def not_better_statements(s: dict, algo: str = "vgpo") -> list[str]:
    """Plain sentences on where ``algo`` does not beat Flow-GRPO (held-out, efficiency, cost, quality)."""
    if algo not in s["algorithms"] or REFERENCE not in s["algorithms"]:
        return [f"No comparison: {algo} or {REFERENCE} has no finished run."]
    a, g = s["algorithms"][algo], s["algorithms"][REFERENCE]
    if not a["runs"] or not g["runs"]:
        return [f"No comparison: {algo} or {REFERENCE} has no finished run."]
    comp = s["comparisons"][algo]
    out = []
    words = {
        "worse": "is worse than",
        "within_noise": "is within noise of (|Δ| ≤ 2 SE)",
        "lower_untested": "is below (1 seed, no error bar)",
        "equal": "equals",
        "higher_untested": "is above, on 1 seed only (no error bar), so it is not shown to beat",
    }
    end = s["eval_epochs"][-1] if s["eval_epochs"] else "end"
    for key in s["metrics"]:
        v = comp["final"].get(key)
        if v and v["verdict"] in words:
            out.append(
                f"Held-out {key} at epoch {end}: VGPO {fmt_mean_std(a['final'][key])} {words[v['verdict']]} "
                f"Flow-GRPO {fmt_mean_std(g['final'][key])} (Δ {v['delta']:+.3f})."
            )
    tags = sorted({k.rsplit("/", 1)[0] for k in a["final"] if "/" in k} - {s["headline"].rsplit("/", 1)[0]})
    suffix = s["headline"].rsplit("/", 1)[-1]
    behind = [
        t
        for t in tags
        if f"{t}/{suffix}" in a["final"]
        and f"{t}/{suffix}" in g["final"]
        and a["final"][f"{t}/{suffix}"]["mean"] is not None
        and g["final"][f"{t}/{suffix}"]["mean"] is not None
        and a["final"][f"{t}/{suffix}"]["mean"] <= g["final"][f"{t}/{suffix}"]["mean"]
    ]
    if behind:
        out.append(f"Per tag ({suffix}), VGPO's mean is not above Flow-GRPO's on: {', '.join(behind)}.")
    eff, ref_gain = comp["efficiency_ratio"], g["gain_over_base"]
    if ref_gain["verdict"] != "better":
        out.append(f"Sample efficiency: not measured. {reference_gain_text(ref_gain)}")
    elif eff["ratio"] is None or eff["ratio"] >= 1:
        reason = {
            True: f"it never reaches Flow-GRPO's final score within the budget (ratio {eff['text']})",
            False: f"epochs-to-target ratio VGPO/GRPO = {eff['text']}",
        }[bool(eff["censored"])]
        out.append(f"Sample efficiency: VGPO is not shown to be more sample-efficient: {reason}.")
    if comp["epoch_time_ratio"] is not None and comp["epoch_time_ratio"] > 1:
        images = f" and {comp['reward_images_ratio']:.1f}x the reward images" if comp["reward_images_ratio"] else ""
        out.append(f"Cost: a VGPO epoch takes {comp['epoch_time_ratio']:.2f}x Flow-GRPO's wall-clock{images}.")
    if a["quality"]["flagged"]:
        out.append(f"Quality monitor flags VGPO runs: {', '.join(a['quality']['flagged'])}.")
    fa, fg = a["quality"]["fd"], g["quality"]["fd"]
    if fa["mean"] is not None and fg["mean"] is not None and fa["mean"] > fg["mean"]:
        floor = (s["base"]["reference"] or {}).get("fd_floor")
        note = (
            f", below the renders-vs-renders floor {floor:.3g}: no real difference"
            if floor is not None and fa["mean"] - fg["mean"] < floor
            else ""
        )
        out.append(
            f"FD to renders is higher (worse) for VGPO: {fmt_mean_std(fa, 4)} vs {fmt_mean_std(fg, 4)} "
            f"(Δ {fa['mean'] - fg['mean']:+.3g}{note})."
        )
    return out


# --------------------------------------------------------------------------------------------------
# The results document
# --------------------------------------------------------------------------------------------------
def build_results(
    plan: Plan,
    command: str,
    wall_s: float,
    started: str,
    extras: dict[str, dict],
    jobs: int | None = None,
    git: dict | None = None,
) -> Results:
    """extras: task -> {"base_quality": ..., "projection": ...} (cached task-level measurements); git: the
    commit read when the invocation started (the code its runs executed), else read now. Every key and
    type of the document is checked on the way into ``Results``."""
    records: dict[str, dict] = {}
    for task in plan.suite.tasks:
        headline = get_world(task.world).headline
        bq = (extras.get(task.name) or {}).get("base_quality")
        for run in plan.runs_of(task.name):
            records[run.id] = run_record(run, plan.out, headline, (bq or {}).get("base"))
    tasks = {
        t.name: summarize_task(
            t,
            plan,
            records,
            (extras.get(t.name) or {}).get("base_quality"),
            (extras.get(t.name) or {}).get("projection"),
        )
        for t in plan.suite.tasks
    }
    return load(
        Results,
        {
            "schema": SCHEMA_VERSION,
            "suite": plan.suite.name,
            "suite_spec": plan.suite.to_dict(),
            "command": command,
            "git": git or git_info(),
            "machine": machine_info(),
            "created": started,
            "wall_s": wall_s,
            "runs_wall_s": sum(r["wall_s"] or 0.0 for r in records.values()),
            "jobs": jobs,
            "rebuilt": None,
            "definitions": {
                "std": "sample std over seeds (ddof 1); null with one seed",
                "final": "held-out metrics at the last eval point (epoch = epochs)",
                "sample_efficiency": "epochs for the seed-mean held-out headline curve to reach Flow-GRPO's "
                "seed-mean final headline, linearly interpolated between eval points; "
                "'>N' = not reached by epoch N (censored)",
                "overhead": "per-epoch means from metrics.jsonl (first epoch left out when >= 3), eval time excluded",
                "quality_flag": {"score_rise": Q.SCORE_RISE, "fd_rise": Q.FD_RISE, "diversity_drop": Q.DIVERSITY_DROP},
                "verdict": "better/worse: |Δ| > 2 SE (Welch); within_noise otherwise; *_untested with one seed",
            },
            "runs": list(records.values()),
            "tasks": tasks,
        },
    )


# What a report-only rebuild keeps from the results of the invocation that ran the suite.
RUN_INVOCATION = ("command", "git", "machine", "created", "wall_s", "jobs")


def keep_run_invocation(results: Results, previous: dict | None) -> Results:
    """A report-only rebuild keeps the command, commit, machine and wall time of the invocation that ran
    the suite (``previous``, the results.json it replaces) and names itself under ``rebuilt``."""
    if not previous or previous.get("schema") != SCHEMA_VERSION:
        return results
    rebuilt = Rebuilt(command=results.command, git=results.git, created=results.created)
    kept = {k: previous.get(k) for k in RUN_INVOCATION}
    return dataclasses.replace(
        results,
        **{**kept, "git": load(Git, kept["git"], "$.git"), "machine": load(Machine, kept["machine"], "$.machine")},
        rebuilt=rebuilt,
    )


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
