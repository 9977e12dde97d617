"""PNG plots of a suite's results (matplotlib, Agg): one set per task."""

from __future__ import annotations

from pathlib import Path

ALGO_COLORS = {
    "grpo": "tab:blue",
    "vgpo": "tab:red",
    "tcrm": "tab:green",
    "adae": "tab:orange",
    "nft": "tab:purple",
    "awm": "tab:brown",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, mean, std, color, label):
    pts = [(a, m, s) for a, m, s in zip(x, mean, std) if m is not None]
    if not pts:
        return
    xs, ms, ss = zip(*pts)
    ax.plot(xs, ms, "o-" if len(xs) < 12 else "-", color=color, label=label, ms=3)
    if any(s is not None for s in ss):
        lo = [m - (s or 0.0) for m, s in zip(ms, ss)]
        hi = [m + (s or 0.0) for m, s in zip(ms, ss)]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path.name


def plot_task(name: str, s: dict, out: Path) -> list[str]:
    """Write this task's plots into ``out``; returns the file names."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    files = []
    algos = [a for a, v in s["algorithms"].items() if v["runs"]]
    color = lambda a: ALGO_COLORS.get(a, None)

    # Held-out score vs epoch, mean and band over seeds.
    fig, axes = plt.subplots(1, len(s["metrics"]), figsize=(5 * len(s["metrics"]), 3.6), squeeze=False)
    for ax, key in zip(axes[0], s["metrics"]):
        for a in algos:
            ho = s["algorithms"][a]["held_out"]
            c = ho["metrics"].get(key)
            if c:
                _band(ax, ho["epochs"], c["mean"], c["std"], color(a), f"{a} (n={len(s['algorithms'][a]['runs'])})")
        ax.set(xlabel="epoch", ylabel=f"held-out {key}", title=f"{name}: held-out {key}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    files.append(_save(fig, out / f"heldout_{name}.png"))

    # Reward diversity over training.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in zip(axes, ("group_std", "zero_std_frac"), ("reward/group_std", "reward/zero_std_frac")):
        for a in algos:
            d = s["algorithms"][a]["reward_diversity"]
            _band(ax, d["epochs"], d[key]["mean"], d[key]["std"], color(a), a)
        ax.set(xlabel="epoch", ylabel=label, title=f"{name}: {label}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    files.append(_save(fig, out / f"reward_std_{name}.png"))

    # Per-step omega and Q profiles of the dense-reward algorithms.
    dense = [a for a in algos if s["algorithms"][a]["tcrm_profile"]]
    if dense:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, key in zip(axes, ("q", "omega")):
            for a in dense:
                p = s["algorithms"][a]["tcrm_profile"]
                ax.plot(p["steps"], p[key], "o-", color=color(a), label=f"{a} (all epochs)", ms=3)
                ax.plot(p["steps"], p[f"{key}_first"], ":", color=color(a), label=f"{a} (first epoch)")
                ax.plot(p["steps"], p[f"{key}_last"], "--", color=color(a), label=f"{a} (last epoch)")
            ax.set(
                xlabel="sampling step i",
                ylabel=f"tcrm/{key}_i",
                title=f"{name}: per-step {'Q' if key == 'q' else 'omega'}",
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        files.append(_save(fig, out / f"tcrm_profile_{name}.png"))

    # Projection accuracy vs step.
    if s["projection"]:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for model, p in s["projection"].items():
            pts = [(i, v) for i, v in zip(p["steps"], p["pooled"]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", label=f"{model} (pooled)", ms=3)
            pts = [(i, v) for i, v in zip(p["steps"], p["within_group"]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), "x--", label=f"{model} (within group)", ms=4)
        ax.set(xlabel="sampling step i", ylabel="Spearman ρ(R(x̂0_i), R(x_T))", title=f"{name}: projection accuracy")
        ax.set_ylim(-1.05, 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        files.append(_save(fig, out / f"projection_{name}.png"))

    # Overhead split.
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bottom = [0.0] * len(algos)
    for part in ("rollout_s", "reward_s", "advantage_s", "update_s"):
        vals = [s["algorithms"][a]["overhead"][part]["mean"] or 0.0 for a in algos]
        ax.bar(algos, vals, bottom=bottom, label=part[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(ylabel="seconds per epoch", title=f"{name}: wall-clock per epoch")
    ax.legend(fontsize=8)
    files.append(_save(fig, out / f"overhead_{name}.png"))

    # Sweeps: held-out headline vs swept value (tcrm_every also vs reward images).
    sweeps = [(p, sw) for p, sw in s["sweeps"].items() if any(pt["final"][s["headline"]]["n"] for pt in sw["points"])]
    if sweeps:
        fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.4), squeeze=False)
        for ax, (param, sw) in zip(axes[0], sweeps):
            pts = [pt for pt in sw["points"] if pt["final"][s["headline"]]["mean"] is not None]
            use_images = param == "tcrm_every"
            xs = [pt["reward_images"]["mean"] if use_images else float(pt["value"]) for pt in pts]
            ys = [pt["final"][s["headline"]]["mean"] for pt in pts]
            es = [pt["final"][s["headline"]]["std"] or 0.0 for pt in pts]
            ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3)
            for x, y, pt in zip(xs, ys, pts):
                ax.annotate(f"{param}={pt['value']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if param == "adae_k":
                ax.set_xscale("symlog", linthresh=0.01)
            ax.set(
                xlabel="reward images per epoch" if use_images else param,
                ylabel=f"final {s['headline']}",
                title=f"{sw['algorithm']}: {param}",
            )
            ax.grid(alpha=0.3)
        files.append(_save(fig, out / f"sweeps_{name}.png"))

    return files


def plot_quality(name: str, runs: list[dict], base: dict | None, out: Path) -> list[str]:
    pts = [r for r in runs if r["task"] == name and r["quality"] and r["quality"].get("score_delta") is not None]
    if not pts:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in pts:
        c = ALGO_COLORS.get(r["algorithm"])
        ax.scatter(
            r["quality"]["score_delta"], r["quality"]["fd"], color=c, marker="x" if r["quality"]["flags"] else "o"
        )
        ax.annotate(r["id"].split("/", 1)[1], (r["quality"]["score_delta"], r["quality"]["fd"]), fontsize=6)
    if base and base.get("fd") is not None:
        ax.axhline(base["fd"], color="grey", ls="--", label="base FD")
        ax.legend(fontsize=8)
    ax.set(
        xlabel="held-out score change (final - epoch 0)",
        ylabel="FD to renders",
        title=f"{name}: reward vs quality (x = flagged)",
    )
    ax.grid(alpha=0.3)
    return [_save(fig, out / f"quality_{name}.png")]


def write_plots(results: dict, out: Path) -> dict[str, list[str]]:
    files = {}
    for name, s in results["tasks"].items():
        files[name] = plot_task(name, s, out) + plot_quality(name, results["runs"], s["base"]["quality"], out)
    return files
