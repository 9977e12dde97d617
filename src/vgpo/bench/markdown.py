"""BENCHMARKS.md: the markdown report of a suite, written from its results document (the dict form of
``vgpo.bench.results.Results``, as in results.json)."""

from __future__ import annotations

from pathlib import Path

from .stats import fmt_mean_std
from .summary import REFERENCE, reference_gain_text


def _gain_text(gain: dict) -> str:
    if not gain or gain.get("delta") is None:
        return "—"
    text = f"{gain['delta']:+.3f}" + (f" ± {gain['se']:.3f}" if gain.get("se") is not None else "")
    return f"**{text}**" if gain["verdict"] == "better" else text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(str(c) for c in row) + " |" for row in rows],
        "",
    ]


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def write_markdown(results: dict, path: Path, plots: dict[str, list[str]]) -> None:
    m, git = results["machine"], results["git"]
    lines = [
        f"# vgpo bench: `{results['suite']}` suite",
        "",
        f"- Command: `{results['command']}`",
        f"- Commit: `{git['commit'] or 'unknown (no git)'}`" + (" (uncommitted changes)" if git.get("dirty") else ""),
        (
            f"- Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads"
            + (f" per run, {results['jobs']} runs side by side" if (results.get("jobs") or 1) > 1 else "")
            + f"), Python {m['python']}"
        ),
        (
            f"- Wall time: {results['wall_s'] / 60:.1f} min this invocation; {results['runs_wall_s'] / 60:.1f} min of "
            "training in finished runs (resumed runs count their last segment only)"
        ),
        (
            f"- Created: {results['created']}. Raw numbers: `results.json` (schema `{results['schema']}`, "
            "docs/benchmarks/SCHEMA.md)."
        ),
        *(
            [
                f"- Report rebuilt from the finished runs by `{rb['command']}` at commit `{rb['git']['commit']}`"
                + (" (uncommitted changes)" if rb["git"].get("dirty") else "")
                + f", {rb['created']}; the lines above "
                "describe the invocation that ran the suite."
            ]
            if (rb := results.get("rebuilt"))
            else []
        ),
        "",
        *([f"Tuning: {results['suite_spec']['tuning']}", ""] if results["suite_spec"].get("tuning") else []),
        (
            "Mean ± sample std over seeds. Held-out prompts are never used for any choice: presets and budgets "
            "are fixed "
            "before the runs, and the held-out subset is a fixed tag-stratified selection of the test split."
        ),
        "",
    ]
    for name, s in results["tasks"].items():
        lines += _task_markdown(name, s, results, plots.get(name, []))
    bad = [r for r in results["runs"] if r["status"] != "done"]
    if bad:
        lines += [
            "## Runs not finished",
            "",
            *_table(["run", "status", "error"], [[r["id"], r["status"], r["error"] or ""] for r in bad]),
        ]
    path.write_text("\n".join(lines) + "\n")


def _task_markdown(name: str, s: dict, results: dict, plots: list[str]) -> list[str]:
    algos = [a for a, v in s["algorithms"].items() if v["runs"]]
    h = s["headline"]
    end = s["eval_epochs"][-1] if s["eval_epochs"] else "?"
    budget = ", ".join(f"{k}={v}" for k, v in s["budget"].items())
    out = [
        f"## Task `{name}`",
        "",
        (
            f"World `{s['world']}`, base `{s['checkpoint']}`, preset `{s['preset'] or '(none)'}`, "
            f"{s['eval_prompts']} held-out prompts, eval at epochs {s['eval_epochs']}. Budget (all algorithms): "
            f"{budget}."
        ),
        "",
    ]
    out += ["### Where VGPO does not beat Flow-GRPO", ""]
    out += [f"- {x}" for x in s["not_better"]] or [
        "- VGPO is ahead of Flow-GRPO on every reported figure (beyond 2 SE)."
    ]
    out += [""]

    base_n = (s["base"]["eval"].get(h) or {}).get("n", 0)
    rows = [["base (epoch 0)", str(base_n), *[fmt_mean_std(s["base"]["eval"].get(k)) for k in s["metrics"]], ""]]
    rows += [
        [
            a,
            str(len(s["algorithms"][a]["runs"])),
            *[fmt_mean_std(s["algorithms"][a]["final"].get(k)) for k in s["metrics"]],
            _gain_text(s["algorithms"][a].get("gain_over_base", {})),
        ]
        for a in algos
    ]
    out += [
        f"### Held-out score at the end (epoch {end})",
        "",
        (
            "Each seed evaluates with its own noise, so the base's score varies between seeds; the gain over the "
            "base is "
            "paired by seed (final minus epoch 0 of the same run: mean ± 1 SE, **bold** beyond 2 SE)."
        ),
        "",
        *_table(["algorithm", "seeds", *s["metrics"], f"{h} gain over base"], rows),
    ]

    epochs = s["eval_epochs"]
    rows = []
    for a in algos:
        ho = s["algorithms"][a]["held_out"]
        vals = dict(
            zip(ho["epochs"], zip(ho["metrics"].get(h, {}).get("mean", []), ho["metrics"].get(h, {}).get("std", [])))
        )
        rows.append([a, *[fmt_mean_std({"mean": vals[e][0], "std": vals[e][1]}) if e in vals else "—" for e in epochs]])
    out += [f"### Held-out `{h}` at the eval points", "", *_table(["algorithm", *[f"epoch {e}" for e in epochs]], rows)]

    suffixes = sorted({k.rsplit("/", 1)[1] for k in s["metrics"]})
    overall = h.rsplit("/", 1)[0]
    tags = sorted(
        {
            k.rsplit("/", 1)[0]
            for a in algos
            for k in s["algorithms"][a]["final"]
            if "/" in k and k.rsplit("/", 1)[1] in suffixes
        }
        - {overall}
    )
    rows = [
        [t, *["; ".join(fmt_mean_std(s["algorithms"][a]["final"].get(f"{t}/{x}")) for x in suffixes) for a in algos]]
        for t in tags
    ]
    out += [f"### Per tag at the end ({' ; '.join(suffixes)})", "", *_table(["tag", *algos], rows)]

    target = s["algorithms"].get(REFERENCE, {}).get("sample_efficiency", {}).get("target")
    ref_gain = s["algorithms"].get(REFERENCE, {}).get("gain_over_base", {})
    rows = []
    for a in algos:
        se = s["algorithms"][a]["sample_efficiency"]
        ratio = (
            s["comparisons"]
            .get(a, {})
            .get("efficiency_ratio", {})
            .get("text", "1 (reference)" if a == REFERENCE else "—")
        )
        rows.append([a, (se["mean_curve"] or {}).get("text", "—"), ", ".join(p["text"] for p in se["per_seed"]), ratio])
    out += [
        "### Sample efficiency",
        "",
        (
            f"Target: Flow-GRPO's final held-out `{h}` (mean over seeds) = {_f(target)}. Epochs for the seed-mean "
            "curve to "
            "reach it (linear interpolation between eval points); '>N': not reached by epoch N (censored; its "
            "ratio is a "
            "lower bound). Per-seed values use each seed's own curve."
            + (
                ""
                if ref_gain.get("verdict") in (None, "better")
                else " **These figures measure noise:** " + reference_gain_text(ref_gain)
            )
        ),
        "",
        *_table(["algorithm", "epochs to target", "per seed", "ratio vs GRPO"], rows),
    ]

    rows = [
        [
            a,
            fmt_mean_std(s["algorithms"][a]["reward_diversity"]["group_std_avg"]),
            fmt_mean_std(s["algorithms"][a]["reward_diversity"]["zero_std_frac_avg"]),
        ]
        for a in algos
    ]
    out += [
        "### Reward diversity over training",
        "",
        (
            "Mean over epochs of `reward/group_std` (within-group reward std) and `reward/zero_std_frac` (samples in "
            "groups with no reward spread, where Flow-GRPO has no signal); curves in the plots."
        ),
        "",
        *_table(["algorithm", "group std", "zero-std fraction"], rows),
    ]

    rows = []
    for a in algos:
        o, c = s["algorithms"][a]["overhead"], s["comparisons"].get(a, {})
        rows.append(
            [
                a,
                *[fmt_mean_std(o[k], 2) for k in ("epoch_s", "rollout_s", "reward_s", "advantage_s", "update_s")],
                fmt_mean_std(o["reward_images"], 0),
                _f(c.get("epoch_time_ratio"), 2) if a != REFERENCE else "1",
                _f(c.get("reward_images_ratio"), 1) if a != REFERENCE else "1",
            ]
        )
    out += [
        "### Overhead per epoch (seconds, eval excluded)",
        "",
        *_table(
            [
                "algorithm",
                "epoch",
                "rollout",
                "reward",
                "advantage",
                "update",
                "reward images",
                "time × GRPO",
                "images × GRPO",
            ],
            rows,
        ),
    ]

    bq, ref = s["base"]["quality"], s["base"]["reference"]
    if bq or any(s["algorithms"][a]["quality"]["fd"]["n"] for a in algos):
        rows = [["base", _f(bq and bq.get("fd")), _f(bq and bq.get("diversity")), ""]] if bq else []
        rows += [
            [
                a,
                fmt_mean_std(s["algorithms"][a]["quality"]["fd"]),
                fmt_mean_std(s["algorithms"][a]["quality"]["diversity"]),
                ", ".join(s["algorithms"][a]["quality"]["flagged"]) or "none",
            ]
            for a in algos
        ]
        q = results["definitions"]["quality_flag"]
        encoder = next((t.get("encoder") for t in results["suite_spec"].get("tasks", []) if t.get("name") == name), "")
        out += [
            "### Quality beside the reward (reward-hacking monitor)",
            "",
            (
                f"Fréchet distance between features of the encoder `{encoder}` of generated held-out images and of "
                "renders of the same prompts "
                "(lower is closer), and within-prompt diversity (mean pairwise feature distance among one prompt's "
                "images). "
                f"Renders vs renders: FD {_f(ref and ref.get('fd_floor'))}, diversity "
                f"{_f(ref and ref.get('diversity'))}. "
                f"A run is flagged when its held-out `{h}` rises while its FD rises by > {q['fd_rise']:.0%} or its "
                "diversity "
                f"falls by > {q['diversity_drop']:.0%} relative to the base."
            ),
            "",
            *_table(["model", "FD", "diversity", "flagged runs"], rows),
        ]
        flagged = [r for r in results["runs"] if r["task"] == name and r["quality"] and r["quality"]["flags"]]
        out += [
            f"- Flagged `{r['id']}`: score {r['quality']['score_delta']:+.3f}; {'; '.join(r['quality']['flags'])}"
            for r in flagged
        ] + ([""] if flagged else [])
    else:
        out += ["### Quality beside the reward", "", "Not measured (no encoder, or --no-quality).", ""]

    out += ["### Open questions", ""]
    proj = s["projection"]
    if proj:
        models = list(proj)
        steps = proj[models[0]]["steps"]
        rows = [
            [str(i), *[_f(proj[mm]["pooled"][i], 2) + " / " + _f(proj[mm]["within_group"][i], 2) for mm in models]]
            for i in steps
        ]
        out += [
            "#### (a) Projection accuracy",
            "",
            (
                "Spearman ρ between the reward of the one-step projection x̂0 at step i and the final reward over SDE "
                "rollouts of train prompts (pooled / mean within prompt group)."
            ),
            "",
            *_table(["step", *models], rows),
        ]
    for param, sw in s["sweeps"].items():
        rows = [
            [
                f"{p['value']:g}" if isinstance(p["value"], float) else str(p["value"]),
                str(p["final"][h]["n"]),
                *[fmt_mean_std(p["final"][k]) for k in s["metrics"]],
                fmt_mean_std(p["reward_images"], 0),
                fmt_mean_std(p["epoch_s"], 2),
                fmt_mean_std(p["zero_std_frac"]),
            ]
            for p in sw["points"]
        ]
        out += [
            f"#### Sweep `{param}` ({sw['algorithm']}): {sw['question']}",
            "",
            *_table([param, "seeds", *s["metrics"], "reward images/epoch", "s/epoch", "zero-std frac"], rows),
        ]
    if plots:
        out += ["### Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    return out
