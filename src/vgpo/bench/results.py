"""The results document of ``vgpo bench`` (schema ``vgpo-bench/1``) as typed dataclasses.

``Results.to_dict()`` is ``results.json``; ``load(cls, data)`` reads it back, checking every key and
type. The checkable spec in ``vgpo.bench.schema`` and the field tables of docs/benchmarks/SCHEMA.md
are both derived from these classes and their help lines (``render_schema_doc``; a test keeps the
committed document equal to its rendering): a field is described in one place, here.

Regenerate the document after changing a class: ``python -m vgpo.bench.results docs/benchmarks/SCHEMA.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from vgpo.errors import VgpoError

SCHEMA_VERSION = "vgpo-bench/1"

Algorithm = Literal["grpo", "vgpo", "tcrm", "adae", "nft", "awm"]
Nums = list[float | None]
T = TypeVar("T")


def h(help: str, **kw: Any) -> Any:
    """A field with its help line (the schema document's "meaning" column)."""
    return dataclasses.field(metadata={"help": help}, **kw)


def absent(help: str) -> Any:
    """A field that documents written before it existed lack: read back as null."""
    return dataclasses.field(default=None, metadata={"help": help, "absent_ok": True})


class Record:
    """Base of the result classes: serialised to plain JSON values in field order."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(typing.cast(Any, self))


# --- small values ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MeanStd(Record):
    """A **mean_std**: mean and sample std (ddof 1) over seeds; std null with one value."""

    mean: float | None = h("mean of the finite values (null: none)")
    std: float | None = h("sample standard deviation (null with fewer than 2 values)")
    n: int = h("how many values")


@dataclass(kw_only=True)
class Curve(Record):
    """Seed-mean curve over the eval points (or training epochs)."""

    mean: Nums = h("mean over seeds at each point")
    std: Nums = h("std over seeds at each point")


@dataclass(kw_only=True)
class Reach(Record):
    """Epochs for a curve to reach the target (see **sample efficiency**)."""

    epochs: float | None = h("epochs to reach the target, interpolated; null when censored")
    censored: bool = h("true when the curve never reaches the target")
    bound: float | None = h("for a censored curve, its last eval epoch")
    text: str = h('the figure as the report prints it (`">N"` when censored)')


@dataclass(kw_only=True)
class Ratio(Record):
    """Epochs-to-target ratio algorithm / Flow-GRPO (< 1: fewer epochs)."""

    ratio: float | None = h("the ratio; null when censored or undefined")
    censored: bool = h("true when the algorithm's curve is censored: the ratio is only a lower bound")
    bound: float | None = h("the lower bound N / GRPO's epochs when censored")
    text: str = h('the figure as the report prints it (`">b"` when censored)')


@dataclass(kw_only=True)
class Verdict(Record):
    """An algorithm against Flow-GRPO on one final metric."""

    delta: float | None = h("difference of the seed means (algorithm - Flow-GRPO)")
    se: float | None = h("Welch standard error sqrt(s1²/n1 + s2²/n2); null with one seed")
    verdict: Literal["better", "worse", "within_noise", "higher_untested", "lower_untested", "equal", "no_result"] = h(
        "see **verdict**"
    )


@dataclass(kw_only=True)
class Gain(Record):
    """Final minus epoch-0 headline per run (same seed, paired)."""

    delta: float | None = h("mean paired gain")
    se: float | None = h("its standard error")
    n: int = h("runs paired")
    verdict: Literal["better", "within_noise", "untested", "no_result"] = h(
        "`better`: mean > 2 SE; `untested`: 1 run; `no_result`: none"
    )


# --- one run ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TrainCurves(Record):
    """Every numeric metrics.jsonl column of a run (training rows, epoch ≥ 1; `eval/*` columns left out)."""

    epoch: list[int] = h("training epochs")
    metrics: dict[str, Nums] = h("column name → value per epoch")


@dataclass(kw_only=True)
class EvalCurves(Record):
    """The eval/epoch_XXXX.json tables of a run (`*/n` counts left out)."""

    epochs: list[int] = h("eval points")
    metrics: dict[str, Nums] = h("eval key → value per eval point")


@dataclass(kw_only=True)
class RunOverhead(Record):
    """Means over epochs of a run's time split (see **overhead**)."""

    epochs_averaged: int = h("epochs in the means (the first is left out when a run has at least 3)")
    epoch_s: float | None = h("`time/epoch_s`")
    rollout_s: float | None = h("`time/rollout_s`")
    reward_s: float | None = h("`time/reward_s`")
    advantage_s: float | None = h("`time/advantage_s`")
    update_s: float | None = h("`time/update_s`")
    reward_images: float | None = h("`perf/reward_images`: images scored per epoch")


@dataclass(kw_only=True)
class RunQuality(Record):
    """A finished run's quality measurement (see **quality**)."""

    fd: float = h("Fréchet distance of its held-out samples' features to the renders'")
    diversity: float | None = h("within-prompt diversity of its samples")
    n_images: int = h("images measured")
    images_per_prompt: int = h("images per held-out prompt")
    score_delta: float | None = h("final − epoch-0 held-out headline")
    flags: list[str] = h("reasons the run is flagged; empty when not flagged")


@dataclass(kw_only=True)
class Run(Record):
    """One run of the suite (`runs[]`)."""

    id: str = h("`<task>/<label>/seed<k>`, label = algorithm or `algorithm+param=value`")
    task: str = h("task name")
    algorithm: Algorithm = h("algorithm")
    variant: dict[str, Any] = h("`{}` for a main run, `{param: value}` for a sweep run")
    seed: int = h("seed")
    dir: str = h("run folder relative to `--out`")
    status: Literal["done", "incomplete", "failed", "missing"] = h("only `done` runs enter summaries")
    config: dict[str, Any] = h("the full TrainConfig")
    wall_s: float | None = h("training wall time of the last segment")
    resumed: bool = h("true if the last segment continued from a checkpoint")
    curves: TrainCurves = h("training curves")
    eval: EvalCurves = h("held-out evaluations")
    overhead: RunOverhead = h("time split")
    quality: RunQuality | None = h("quality measurement (null: not measured)")
    error: str | None = h("last line of `bench_error.txt`")


# --- per task and algorithm ------------------------------------------------------------------------
@dataclass(kw_only=True)
class HeldOut(Record):
    """Held-out curves over the eval points, every eval key (per tag, strict and partial)."""

    epochs: list[float] = h("eval points")
    metrics: dict[str, Curve] = h("eval key → seed-mean curve")


@dataclass(kw_only=True)
class SampleEfficiency(Record):
    """Epochs to reach Flow-GRPO's final headline (see **sample efficiency**)."""

    target: float | None = h("Flow-GRPO's seed-mean final headline")
    mean_curve: Reach | None = h("on the seed-mean curve")
    per_seed: list[Reach] = h("on each seed's own curve")


@dataclass(kw_only=True)
class RewardDiversity(Record):
    """Within-group reward spread over training."""

    epochs: list[float] = h("training epochs")
    group_std: Curve = h("`reward/group_std` curve")
    zero_std_frac: Curve = h("`reward/zero_std_frac` curve")
    group_std_avg: MeanStd = h("mean over epochs of `reward/group_std`, over seeds")
    zero_std_frac_avg: MeanStd = h("mean over epochs of `reward/zero_std_frac`, over seeds")


@dataclass(kw_only=True)
class AlgorithmOverhead(Record):
    """Mean_std over seeds of the runs' overhead."""

    epoch_s: MeanStd = h("seconds per epoch")
    rollout_s: MeanStd = h("of which rollout")
    reward_s: MeanStd = h("of which reward")
    advantage_s: MeanStd = h("of which advantage")
    update_s: MeanStd = h("of which update")
    reward_images: MeanStd = h("images scored per epoch")


@dataclass(kw_only=True)
class AlgorithmQuality(Record):
    """Quality over an algorithm's runs."""

    fd: MeanStd = h("FD over seeds")
    diversity: MeanStd = h("diversity over seeds")
    flagged: list[str] = h("flagged run ids")


@dataclass(kw_only=True)
class TcrmProfile(Record):
    """Per-step TCRM values of dense-reward algorithms: mean over epochs and seeds of `tcrm/q_i`, `tcrm/omega_i`."""

    steps: list[int] = h("trained steps")
    q: Nums = h("Q_i, mean over epochs and seeds")
    q_first: Nums = h("Q_i at the first epoch")
    q_last: Nums = h("Q_i at the last epoch")
    omega: Nums = h("omega_i, mean over epochs and seeds")
    omega_first: Nums = h("omega_i at the first epoch")
    omega_last: Nums = h("omega_i at the last epoch")


@dataclass(kw_only=True)
class AlgorithmSummary(Record):
    """One algorithm of a task (`tasks.<name>.algorithms.<algo>`), main runs only."""

    runs: list[str] = h("finished main runs")
    seeds: list[int] = h("their seeds")
    held_out: HeldOut = h("held-out curves")
    final: dict[str, MeanStd] = h("held-out metrics at the end, by eval key")
    sample_efficiency: SampleEfficiency = h("epochs to Flow-GRPO's final score")
    gain_over_base: Gain | None = absent("final minus epoch-0 headline, paired by seed")
    reward_diversity: RewardDiversity = h("reward spread over training")
    overhead: AlgorithmOverhead = h("time split")
    quality: AlgorithmQuality = h("quality monitor")
    tcrm_profile: TcrmProfile | None = h("null for algorithms without dense rewards")


@dataclass(kw_only=True)
class BaseQuality(Record):
    """The base model's quality measurement."""

    fd: float = h("FD to the renders")
    diversity: float | None = h("within-prompt diversity")
    n_images: int = h("images measured")
    images_per_prompt: int = h("images per held-out prompt")


@dataclass(kw_only=True)
class RenderReference(Record):
    """The same numbers for two independent render sets."""

    fd_floor: float = h("FD between two render sets: differences below it mean nothing")
    diversity: float | None = h("the renders' within-prompt diversity")


@dataclass(kw_only=True)
class TaskBase(Record):
    """The base model of a task."""

    eval: dict[str, MeanStd] = h("the epoch-0 evaluation by eval key (one value per seed)")
    quality: BaseQuality | None = h("its quality (null: not measured)")
    reference: RenderReference | None = h("render-vs-render reference (null: not measured)")


@dataclass(kw_only=True)
class Comparison(Record):
    """An algorithm (not grpo) against Flow-GRPO."""

    final: dict[str, Verdict] = h("by eval key")
    efficiency_ratio: Ratio = h("epochs-to-target ratio")
    epoch_time_ratio: float | None = h("epoch time, algorithm / Flow-GRPO")
    reward_images_ratio: float | None = h("reward images per epoch, algorithm / Flow-GRPO")


@dataclass(kw_only=True)
class SweepPoint(Record):
    """One value of a swept field."""

    value: float = h("the swept value")
    runs: list[str] = h("its run ids")
    final: dict[str, MeanStd] = h("final held-out metrics of the task's reported metrics")
    reward_images: MeanStd = h("images scored per epoch")
    epoch_s: MeanStd = h("seconds per epoch")
    zero_std_frac: MeanStd = h("mean over epochs of `reward/zero_std_frac`")


@dataclass(kw_only=True)
class SweepSummary(Record):
    """A sweep of one field."""

    algorithm: str = h("the swept algorithm")
    question: str = h("what the sweep asks")
    points: list[SweepPoint] = h("one per value")


@dataclass(kw_only=True)
class ProjectionAccuracy(Record):
    """Spearman ρ of projection reward and final reward, per step (see **projection accuracy**)."""

    steps: list[int] = h("steps")
    pooled: Nums = h("over all samples")
    within_group: Nums = h("mean over prompt groups where both sides vary")
    final_reward_mean: float = h("mean final reward of the rollouts")
    n_samples: int = h("rollouts")


@dataclass(kw_only=True)
class TaskSummary(Record):
    """One task (`tasks.<name>`)."""

    world: str = h("the task spec's world")
    checkpoint: str = h("its base checkpoint")
    preset: str = h("its preset YAML")
    headline: str = h("the world's headline metric (`overall/strict` for shapes)")
    metrics: list[str] = h("headline + reported secondary metrics")
    budget: dict[str, Any] = h("the task overrides (identical for all algorithms)")
    eval_prompts: int | None = h("held-out prompts evaluated")
    eval_epochs: list[int] = h("the fixed eval points")
    base: TaskBase = h("the base model")
    algorithms: dict[str, AlgorithmSummary] = h("algorithm → summary")
    comparisons: dict[str, Comparison] = h("algorithm (not grpo) → comparison with Flow-GRPO")
    sweeps: dict[str, SweepSummary] = h("swept field → sweep")
    projection: dict[str, ProjectionAccuracy] | None = h("model (`base`, `grpo/seed0`, ...) → projection accuracy")
    not_better: list[str] = h("plain statements of where VGPO does not beat Flow-GRPO")


# --- the document ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Git(Record):
    """The code's commit."""

    commit: str | None = h("`git rev-parse HEAD` (null without git)")
    dirty: bool | None = h("uncommitted changes to tracked files")


@dataclass(kw_only=True)
class Machine(Record):
    """Where the suite ran."""

    platform: str = h("`platform.platform()`")
    processor: str = h("processor or machine name")
    cpu_count: int | None = h("`os.cpu_count()`")
    python: str = h("Python version")
    torch: str = h("torch version")
    torch_threads: int = h("torch threads of the invoking process")
    omp_num_threads: str | None = h("`OMP_NUM_THREADS`")


@dataclass(kw_only=True)
class Rebuilt(Record):
    """The `--report-only` invocation that rebuilt the report."""

    command: str = h("its command line")
    git: Git = h("its commit")
    created: str = h("its ISO 8601 UTC start time")


@dataclass(kw_only=True)
class Results(Record):
    """The whole document (`results.json`)."""

    schema: Literal["vgpo-bench/1"] = h("this document's version")
    suite: str = h("suite name")
    suite_spec: dict[str, Any] = h("the suite definition (tasks, budgets, sweeps)")
    command: str = h("the command line of the invocation that ran the suite")
    git: Git = h("the commit of the code, read when the invocation started")
    machine: Machine = h("the machine")
    created: str = h("ISO 8601 UTC start time of this invocation")
    wall_s: float = h("wall time of this invocation")
    runs_wall_s: float = h("sum of the finished runs' `wall_s`")
    jobs: int | None = absent("runs side by side (`--jobs`); null when not recorded")
    rebuilt: Rebuilt | None = absent(
        "a `--report-only` rebuild keeps `command`, `git`, `machine`, `created`, `wall_s` and `jobs` of the "
        "invocation that ran the suite and names itself here"
    )
    definitions: dict[str, Any] = h("the definitions above in short, with the flag thresholds (`quality_flag`)")
    runs: list[Run] = h("every run of the suite")
    tasks: dict[str, TaskSummary] = h("task name → summary")


# --------------------------------------------------------------------------------------------------
# Loading: every key and type checked, the path of a departure named
# --------------------------------------------------------------------------------------------------
def hints_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(sys.modules[__name__]))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _load(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _load(inner, value, path)
    if origin is Literal:
        if value not in args:
            raise VgpoError(f"{path}: {value!r} not one of {args}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise VgpoError(f"{path}: expected a list, got {type(value).__name__}")
        return [_load(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise VgpoError(f"{path}: expected an object, got {type(value).__name__}")
        return {k: _load(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return load(tp, value, path)
    if tp is float:
        if not _is_number(value):
            raise VgpoError(f"{path}: expected a number, got {type(value).__name__}")
        return value  # an int stays an int, so the document round-trips exactly
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise VgpoError(f"{path}: expected an integer, got {type(value).__name__}")
        return value
    if not isinstance(value, tp):
        raise VgpoError(f"{path}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def load(cls: type[T], data: Any, path: str = "$") -> T:
    """``cls`` built from its JSON form; a missing, unknown or mistyped key raises a one-line VgpoError
    naming its path. Keys marked absent-ok (added after documents were written) read as null."""
    if not isinstance(data, dict):
        raise VgpoError(f"{path}: expected an object, got {type(data).__name__}")
    hints = hints_of(cls)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise VgpoError(f"{path}: unknown key '{unknown[0]}'")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.metadata.get("absent_ok"):
                continue
            raise VgpoError(f"{path}: missing key '{name}'")
        kwargs[name] = _load(hints[name], data[name], f"{path}.{name}")
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# The field tables of SCHEMA.md, derived from the classes
# --------------------------------------------------------------------------------------------------
def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return f"{_type_text(inner)} \\| null"
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin is list:
        return f"[{_type_text(args[0])}]"
    if origin is dict:
        return "object" if args[1] is Any else f"{{key: {_type_text(args[1])}}}"
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return {float: "number", int: "int", str: "string", bool: "bool"}[tp]


def _classes(root: type) -> list[type]:
    """``root`` and every result class it refers to, in the order a reader meets them."""
    seen: list[type] = []

    def visit(tp: Any) -> None:
        if dataclasses.is_dataclass(tp):
            if tp in seen:
                return
            seen.append(tp)
            for f in dataclasses.fields(tp):
                visit(hints_of(tp)[f.name])
        else:
            for a in typing.get_args(tp):
                visit(a)

    visit(root)
    return seen


def schema_tables(root: type = Results) -> str:
    """A markdown section per result class: key, type and meaning of each field."""
    out = []
    for cls in _classes(root):
        out += [f"### {cls.__name__}", "", (cls.__doc__ or "").strip(), "", "| key | type | meaning |", "|---|---|---|"]
        hints = hints_of(cls)
        for f in dataclasses.fields(cls):
            meaning = f.metadata["help"] + (
                " (absent, read as null, in documents written before it existed)" if f.metadata.get("absent_ok") else ""
            )
            out.append(f"| `{f.name}` | {_type_text(hints[f.name])} | {meaning} |")
        out.append("")
    return "\n".join(out)


BEGIN = "<!-- generated by vgpo.bench.results: do not edit by hand -->"
END = "<!-- end of generated section -->"


def render_schema_doc(text: str) -> str:
    """``text`` (SCHEMA.md) with its generated section replaced by the tables of the current classes."""
    if BEGIN not in text or END not in text:
        raise VgpoError(f"schema document: expected the markers {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{schema_tables()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vgpo.bench.results docs/benchmarks/SCHEMA.md", file=sys.stderr)
        return 2
    path = Path(args[0])
    path.write_text(render_schema_doc(path.read_text()))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
