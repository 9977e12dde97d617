"""``vgpo bench``: benchmark suites of RL runs (Flow-GRPO, VGPO, ablations) with a results JSON,
BENCHMARKS.md and plots. Modules: ``suites`` (what runs), ``runner`` (running, resuming),
``results`` (the results document as typed dataclasses; the schema is derived from them),
``summary`` (per-run records, per-task summaries), ``markdown`` (BENCHMARKS.md), ``plots``,
``quality`` (FD/diversity monitor, projection accuracy), ``stats`` (FD, Spearman, sample efficiency),
``schema`` (the checkable spec). Schema: docs/benchmarks/SCHEMA.md."""

from .stats import epochs_to_reach, frechet_distance, spearman
from .suites import Suite, Sweep, TaskSpec, get_suite

__all__ = ["Suite", "Sweep", "TaskSpec", "epochs_to_reach", "frechet_distance", "get_suite", "run_suite", "spearman"]


def run_suite(*args, **kwargs):
    from .runner import run_suite as _run

    return _run(*args, **kwargs)
