"""Numbers of the benchmark: Fréchet distance, Spearman correlation, sample efficiency, seed statistics.

numpy only (scipy is not a dependency of vgpo); the tests check these against scipy and closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

REACH_TOL = 1e-9  # a score counts as reaching the target when score >= target - REACH_TOL


# --------------------------------------------------------------------------------------------------
# Seed statistics
# --------------------------------------------------------------------------------------------------
def _finite(values: Iterable) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable) -> dict:
    """{"mean", "std", "n"} over the finite values: std is the sample std (ddof 1), null for n < 2;
    mean is null for n = 0."""
    xs = _finite(values)
    n = len(xs)
    mean = sum(xs) / n if n else None
    std = float(np.std(xs, ddof=1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n}


def fmt_mean_std(stat: dict | None, digits: int = 3, pct: bool = False) -> str:
    """'0.412 ± 0.031' (or '41.2 ± 3.1' with pct); '—' when there is no value; no '±' for one seed."""
    if not stat or stat.get("mean") is None:
        return "—"
    scale, d = (100.0, max(0, digits - 2)) if pct else (1.0, digits)
    text = f"{stat['mean'] * scale:.{d}f}"
    if stat.get("std") is not None:
        text += f" ± {stat['std'] * scale:.{d}f}"
    return text


# --------------------------------------------------------------------------------------------------
# Fréchet distance and diversity on encoder features
# --------------------------------------------------------------------------------------------------
def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (ddof 1) of features (N, D)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_stats: expected (N >= 2, D) features, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

    tr((C1 C2)^(1/2)) is the sum of the square roots of the eigenvalues of C1^(1/2) C2 C1^(1/2), a
    symmetric PSD matrix with the same spectrum as C1 C2, so two symmetric eigendecompositions replace
    scipy.linalg.sqrtm (and no complex parts from round-off appear)."""
    s1 = _sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return max(0.0, float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))


def within_group_diversity(features: np.ndarray, groups: Sequence) -> float | None:
    """Mean over groups (prompts) of the mean pairwise Euclidean distance between the group's features;
    groups with one member are skipped; None when no group has two."""
    x = np.asarray(features, dtype=np.float64)
    groups = list(groups)
    per_group = []
    for g in dict.fromkeys(groups):
        rows = x[[i for i, h in enumerate(groups) if h == g]]
        if len(rows) < 2:
            continue
        d = np.sqrt(((rows[:, None, :] - rows[None, :, :]) ** 2).sum(-1))
        n = len(rows)
        per_group.append(d.sum() / (n * (n - 1)))
    return float(np.mean(per_group)) if per_group else None


# --------------------------------------------------------------------------------------------------
# Rank correlation
# --------------------------------------------------------------------------------------------------
def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based first position of each distinct value
    return (first + (counts + 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None when either side is constant or
    there are fewer than two pairs (scipy returns nan there)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman: expected two 1-D arrays of one length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denom == 0.0:
        return None
    return float(np.clip(ra @ rb / denom, -1.0, 1.0))


# --------------------------------------------------------------------------------------------------
# Sample efficiency
# --------------------------------------------------------------------------------------------------
def epochs_to_reach(epochs: Sequence[float], scores: Sequence[float], target: float, interpolate: bool = True) -> dict:
    """Epochs a held-out curve needs to reach ``target``.

    The curve is known at its eval epochs (ascending). The answer is the first eval epoch whose score
    is >= target, or with ``interpolate`` the epoch where the straight line between the previous eval
    point and that one crosses the target. A curve already at the target at its first point reaches it
    there (0 for an eval at epoch 0). A curve that never reaches it is *censored*: ``epochs`` is None,
    ``bound`` is its last eval epoch and the text reads ``'>N'``.

    Returns {"epochs": float|None, "censored": bool, "bound": float|None, "text": str}."""
    pts = [(float(e), float(s)) for e, s in zip(epochs, scores) if s is not None and math.isfinite(float(s))]
    if not pts or target is None:
        return {"epochs": None, "censored": False, "bound": None, "text": "—"}
    for k, (e, s) in enumerate(pts):
        if s >= target - REACH_TOL:
            if k == 0 or not interpolate:
                reached = e
            else:
                e0, s0 = pts[k - 1]
                reached = e0 + (target - s0) / (s - s0) * (e - e0) if s != s0 else e
            return {"epochs": reached, "censored": False, "bound": None, "text": f"{reached:.1f}"}
    last = pts[-1][0]
    return {"epochs": None, "censored": True, "bound": last, "text": f">{last:g}"}


def efficiency_ratio(algo: dict, ref: dict) -> dict:
    """Ratio of epochs-to-target, ``algo / ref`` (below 1: algo is more sample-efficient).

    Censored algo: the ratio is a lower bound, ``ratio`` None, ``bound`` = algo.bound / ref.epochs,
    text '>b'. ref reaching the target at epoch 0 (the base already scores it) or not at all: no ratio."""
    out = {"ratio": None, "censored": False, "bound": None, "text": "n/a"}
    if ref.get("epochs") is None:
        return out
    if ref["epochs"] <= 0:
        return {**out, "text": "n/a (the target is met at epoch 0)"}
    if algo.get("censored"):
        bound = algo["bound"] / ref["epochs"]
        return {"ratio": None, "censored": True, "bound": bound, "text": f">{bound:.2f}"}
    if algo.get("epochs") is None:
        return out
    ratio = algo["epochs"] / ref["epochs"]
    return {"ratio": ratio, "censored": False, "bound": None, "text": f"{ratio:.2f}"}


def mean_curve(
    curves: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[list[float], list[float], list[float | None]]:
    """Mean and sample std over seeds of curves (epochs, values), on the epochs every curve has."""
    if not curves:
        return [], [], []
    common = sorted(set.intersection(*[{float(e) for e in c[0]} for c in curves]))
    lookups = [dict(zip((float(e) for e in c[0]), c[1])) for c in curves]
    means, stds = [], []
    for e in common:
        stat = mean_std(lk[e] for lk in lookups)
        means.append(stat["mean"])
        stds.append(stat["std"])
    return common, means, stds


def welch_se(a: dict, b: dict) -> float | None:
    """Standard error of mean(a) - mean(b) from two mean_std dicts (None without two seeds each)."""
    if a.get("std") is None or b.get("std") is None:
        return None
    return math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


# --------------------------------------------------------------------------------------------------
# Gradient signal and noise (benchmarks/gradient_snr.py)
# --------------------------------------------------------------------------------------------------
def gradient_signal_noise(grads: Sequence[np.ndarray]) -> dict:
    """Split K >= 3 independent gradient estimates g_e = s + n_e into signal and noise.

    signal: |s|^2, estimated without bias by the mean of g_e.g_f over pairs e != f (the noises are
    independent, so their cross terms vanish on average); signal_se: its standard error, treating
    the pairs as independent (a rough error bar); noise: E|n_e|^2, the mean of |g_e|^2 minus the
    signal; snr: signal / noise, the SNR of one estimate (nan without noise); cos: the mean pairwise
    cosine over pairs of non-zero estimates (nan without any)."""
    if len(grads) < 3:
        raise ValueError(f"gradient_signal_noise: need at least 3 estimates, got {len(grads)}")
    g = [np.asarray(x, dtype=np.float64).ravel() for x in grads]
    norms = [float(np.linalg.norm(x)) for x in g]
    dots, cosines = [], []
    for a in range(len(g)):
        for b in range(a + 1, len(g)):
            dots.append(float(g[a] @ g[b]))
            if norms[a] > 0 and norms[b] > 0:
                cosines.append(dots[-1] / (norms[a] * norms[b]))
    signal = float(np.mean(dots))
    noise = float(np.mean(np.square(norms))) - signal
    return {
        "signal": signal,
        "signal_se": float(np.std(dots, ddof=1) / math.sqrt(len(dots))),
        "noise": noise,
        "snr": signal / noise if noise > 0 else math.nan,
        "cos": float(np.mean(cosines)) if cosines else math.nan,
    }
