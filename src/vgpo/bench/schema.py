"""The results JSON schema (version ``vgpo-bench/1``) as a checkable spec; documented field by field
in docs/benchmarks/SCHEMA.md (a test keeps the two in step).

Spec language: a type; ``Opt(spec)`` (the spec or null); ``OneOf(*literals)``; ``[spec]`` (a list of
items); a dict of required keys, where the key ``"*"`` gives the spec of any further key.
"""

from __future__ import annotations

from typing import Any


class Opt:
    def __init__(self, spec: Any):
        self.spec = spec


class OneOf:
    def __init__(self, *values: Any):
        self.values = values


class Num:
    """int or float, not bool."""


NUMS = [Opt(Num)]
MEAN_STD = {"mean": Opt(Num), "std": Opt(Num), "n": int}
CURVE = {"mean": NUMS, "std": NUMS}
REACH = {"epochs": Opt(Num), "censored": bool, "bound": Opt(Num), "text": str}
RATIO = {"ratio": Opt(Num), "censored": bool, "bound": Opt(Num), "text": str}
VERDICT = {"delta": Opt(Num), "se": Opt(Num),
           "verdict": OneOf("better", "worse", "within_noise", "higher_untested", "lower_untested", "equal", "no_result")}
QUALITY = {"fd": Num, "diversity": Opt(Num), "n_images": int, "images_per_prompt": int, "score_delta": Opt(Num),
           "flags": [str]}
PROJECTION = {"steps": [int], "pooled": NUMS, "within_group": NUMS, "final_reward_mean": Num, "n_samples": int}

RUN = {
    "id": str, "task": str, "algorithm": OneOf("grpo", "vgpo", "tcrm", "adae", "nft", "awm"), "variant": dict, "seed": int,
    "dir": str, "status": OneOf("done", "incomplete", "failed", "missing"), "config": dict, "wall_s": Opt(Num),
    "resumed": bool,
    "curves": {"epoch": [int], "metrics": {"*": NUMS}},
    "eval": {"epochs": [int], "metrics": {"*": NUMS}},
    "overhead": {"epochs_averaged": int, "epoch_s": Opt(Num), "rollout_s": Opt(Num), "reward_s": Opt(Num),
                 "advantage_s": Opt(Num), "update_s": Opt(Num), "reward_images": Opt(Num)},
    "quality": Opt(QUALITY), "error": Opt(str),
}

ALGORITHM = {
    "runs": [str], "seeds": [int],
    "held_out": {"epochs": [Num], "metrics": {"*": CURVE}},
    "final": {"*": MEAN_STD},
    "sample_efficiency": {"target": Opt(Num), "mean_curve": Opt(REACH), "per_seed": [REACH]},
    "gain_over_base": {"delta": Opt(Num), "se": Opt(Num), "n": int,
                       "verdict": OneOf("better", "within_noise", "untested", "no_result")},
    "reward_diversity": {"epochs": [Num], "group_std": CURVE, "zero_std_frac": CURVE, "group_std_avg": MEAN_STD,
                         "zero_std_frac_avg": MEAN_STD},
    "overhead": {"epoch_s": MEAN_STD, "rollout_s": MEAN_STD, "reward_s": MEAN_STD, "advantage_s": MEAN_STD,
                 "update_s": MEAN_STD, "reward_images": MEAN_STD},
    "quality": {"fd": MEAN_STD, "diversity": MEAN_STD, "flagged": [str]},
    "tcrm_profile": Opt({"steps": [int], "q": NUMS, "omega": NUMS, "q_first": NUMS, "q_last": NUMS,
                         "omega_first": NUMS, "omega_last": NUMS}),
}

TASK = {
    "world": str, "checkpoint": str, "preset": str, "headline": str, "metrics": [str], "budget": dict,
    "eval_prompts": Opt(int), "eval_epochs": [int],
    "base": {"eval": {"*": MEAN_STD},
             "quality": Opt({"fd": Num, "diversity": Opt(Num), "n_images": int, "images_per_prompt": int}),
             "reference": Opt({"fd_floor": Num, "diversity": Opt(Num)})},
    "algorithms": {"*": ALGORITHM},
    "comparisons": {"*": {"final": {"*": VERDICT}, "efficiency_ratio": RATIO, "epoch_time_ratio": Opt(Num),
                          "reward_images_ratio": Opt(Num)}},
    "sweeps": {"*": {"algorithm": str, "question": str,
                     "points": [{"value": Num, "runs": [str], "final": {"*": MEAN_STD}, "reward_images": MEAN_STD,
                                 "epoch_s": MEAN_STD, "zero_std_frac": MEAN_STD}]}},
    "projection": Opt({"*": PROJECTION}),
    "not_better": [str],
}

RESULTS = {
    "schema": OneOf("vgpo-bench/1"), "suite": str, "suite_spec": dict, "command": str,
    "git": {"commit": Opt(str), "dirty": Opt(bool)},
    "machine": {"platform": str, "processor": str, "cpu_count": Opt(int), "python": str, "torch": str,
                "torch_threads": int, "omp_num_threads": Opt(str)},
    "created": str, "wall_s": Num, "runs_wall_s": Num, "jobs": Opt(int),
    "rebuilt": Opt({"command": str, "git": {"commit": Opt(str), "dirty": Opt(bool)}, "created": str}),
    "definitions": dict,
    "runs": [RUN], "tasks": {"*": TASK},
}


def validate(value: Any, spec: Any = RESULTS, path: str = "$") -> list[str]:
    """Every place where ``value`` departs from ``spec`` ([] when it conforms)."""
    if isinstance(spec, Opt):
        return [] if value is None else validate(value, spec.spec, path)
    if isinstance(spec, OneOf):
        return [] if value in spec.values else [f"{path}: {value!r} not one of {spec.values}"]
    if spec is Num:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {type(value).__name__}"]
    if isinstance(spec, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in validate(v, spec[0], f"{path}[{i}]")]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        errors = [f"{path}: missing key '{k}'" for k in spec if k != "*" and k not in value]
        for k, v in value.items():
            if k in spec:
                errors += validate(v, spec[k], f"{path}.{k}")
            elif "*" in spec:
                errors += validate(v, spec["*"], f"{path}.{k}")
        return errors
    if spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {type(value).__name__}"]
    return [] if isinstance(value, spec) else [f"{path}: expected {spec.__name__}, got {type(value).__name__}"]


def field_names(spec: Any = RESULTS) -> set[str]:
    """Every named key of the spec (for the documentation check)."""
    if isinstance(spec, Opt):
        return field_names(spec.spec)
    if isinstance(spec, list):
        return field_names(spec[0])
    if isinstance(spec, dict):
        return {k for k in spec if k != "*"} | {n for v in spec.values() for n in field_names(v)}
    return set()
