"""Run a suite: every selected run that is not finished, the task-level checks, then the results.

Resumability: a run is finished when its folder holds ``bench_done.json``, written after ``train``
returns; a finished run is never re-run. An unfinished run with a checkpoint continues with
``train(cfg, resume=True)``; one without starts over. The quality measurement of a run, the base
model's quality and the projection check are cached in their own files, so a killed bench loses at
most the run or measurement in progress. A run that fails is recorded (``bench_error.txt``) and the
suite goes on; the command exits with an error listing the failures after writing the report.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vgpo.errors import VgpoError
from vgpo.rewards import build as build_reward
from vgpo.train import TrainConfig, train
from vgpo.train.advantages import scored_steps
from vgpo.train.run_folder import has_checkpoint
from vgpo.utils import atomic_write_text
from vgpo.worlds import get_world

from . import quality as Q
from .markdown import write_markdown
from .suites import (
    LEGACY_VALUES,
    Plan,
    RunPlan,
    Suite,
    TaskSpec,
    comparable_config,
    expand,
    select,
    subset_path,
)
from .summary import (
    ERROR_FILE,
    MARKER,
    QUALITY_FILE,
    build_results,
    git_info,
    keep_run_invocation,
    now_iso,
)

RESULTS = "results.json"
REPORT = "BENCHMARKS.md"
# Rough cost model of the dry run: seconds per image through the shipped tiny U-Net at 32x32 pixels
# (scaled by the canvas area for other worlds), the backward's extra factor, seconds per scored image
# by world (the Shapes detector; RapidOCR for text). Measured with one torch thread on a 2-core machine
# busy with another job (quick budget: ~8-11 s per Shapes epoch); two free threads are faster.
FWD_S, BWD_FACTOR = 0.009, 1.5
REWARD_S = {"shapes": 0.0015, "text": 0.015}  # other worlds: estimated at the detector's cost


@dataclass
class Outcome:
    results: Path
    report: Path
    plots: list[str]
    ran: list[str] = field(default_factory=list)  # trained from scratch in this invocation
    resumed: list[str] = field(default_factory=list)  # continued from a checkpoint
    skipped: list[str] = field(default_factory=list)  # already finished
    failed: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Task preparation
# --------------------------------------------------------------------------------------------------
def stratified_subset(metas: Sequence[dict], n: int) -> list[dict]:
    """A fixed subset of n prompts: n split evenly over the tags (round-robin in sorted tag order, so
    the first tags take the remainder and a small tag's unused share goes to the others), evenly
    spaced within each tag, in the file's order. Depends on nothing but the file and n."""
    if n <= 0 or n >= len(metas):
        return list(metas)
    by_tag: dict[str, list[int]] = {}
    for i, m in enumerate(metas):
        by_tag.setdefault(m.get("tag", ""), []).append(i)
    tags = sorted(by_tag)
    quota = dict.fromkeys(tags, 0)
    while sum(quota.values()) < n:  # round-robin over the tags that still have prompts
        for t in tags:
            if quota[t] < len(by_tag[t]) and sum(quota.values()) < n:
                quota[t] += 1
    keep = set()
    for t in tags:
        rows, k = by_tag[t], quota[t]
        keep.update(rows[math.floor((j + 0.5) * len(rows) / k)] for j in range(k))
    return [metas[i] for i in sorted(keep)]


def write_subset(task: TaskSpec, out: Path) -> None:
    if not task.eval_prompts:
        return
    world = get_world(task.world)
    metas = stratified_subset(world.load_prompts(world.test_file), task.eval_prompts)
    line = (lambda m: json.dumps(m)) if task.prompt_format == "jsonl" else (lambda m: m["prompt"])
    text = "".join(line(m) + "\n" for m in metas)
    path = subset_path(out, task)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(text, path)


def eval_metas(run: RunPlan) -> list[dict]:
    """The held-out prompts exactly as the trainer evaluates them."""
    cfg = run.config
    world = get_world(cfg.world)
    metas = world.load_prompts(Path(cfg.test_prompts) if cfg.test_prompts else world.test_file)
    return metas[: cfg.eval_limit] if cfg.eval_limit else metas


def check_checkpoint(task: TaskSpec, model: str) -> None:
    path = Path(task.checkpoint)
    if model == "tiny" and not (path / "config.json").is_file():
        raise VgpoError(
            f"task {task.name}: base checkpoint {path} not found (expected config.json + model.safetensors "
            f"from `vgpo pretrain --world {task.world} --out {path}`)"
        )


class TaskContext:
    """Lazily built, cached per task: the encoder, the reference renders' features, the base's quality."""

    def __init__(self, task: TaskSpec, plan: Plan, use_quality: bool, log: Callable[[str], None]):
        self.task, self.plan, self.log = task, plan, log
        self.dir = plan.out / "tasks" / task.name
        self.use_quality = use_quality and bool(task.encoder)
        self._encoder = None
        self._ref = None
        self._metas = None

    @property
    def first_run(self) -> RunPlan:
        return self.plan.runs_of(self.task.name)[0]

    def metas(self) -> list[dict]:
        if self._metas is None:
            self._metas = eval_metas(self.first_run)
        return self._metas

    def encoder(self) -> Q.ImageEncoder:
        if self._encoder is None:
            self._encoder = Q.load_encoder(self.task.encoder)
        return self._encoder

    def reference(self) -> Q.Reference:
        if self._ref is None:
            self._ref = Q.reference(
                get_world(self.task.world), self.metas(), self.task.quality_images_per_prompt, self.encoder()
            )
        return self._ref

    def base_quality_path(self) -> Path:
        return self.dir / "base_quality.json"

    def base_quality(self) -> dict | None:
        path = self.base_quality_path()
        if path.is_file():
            return json.loads(path.read_text())
        if not self.use_quality:
            return None
        from vgpo.models import load_model

        cfg = self.first_run.config
        self.log(f"[{self.task.name}] quality of the base model")
        model = load_model(cfg.model, cfg.checkpoint, cfg.model_options, cfg.device)
        ref = self.reference()
        data = {
            "encoder": self.task.encoder,
            "encoder_metrics": json.loads((Path(self.task.encoder) / "config.json").read_text()).get("metrics"),
            "base": Q.model_quality(model, cfg, self.metas(), self.task.quality_images_per_prompt, self.encoder(), ref),
            "reference": {"fd_floor": ref.fd_floor, "diversity": ref.diversity},
        }
        atomic_write_text(json.dumps(data, indent=2) + "\n", path)
        return data

    def run_quality(self, run: RunPlan) -> None:
        path = run.dir / QUALITY_FILE
        if not self.use_quality or path.is_file():
            return
        model = Q.load_trained(run.config, run.dir)
        data = Q.model_quality(
            model, run.config, self.metas(), self.task.quality_images_per_prompt, self.encoder(), self.reference()
        )
        atomic_write_text(json.dumps(data, indent=2) + "\n", path)

    def projection(self, enabled: bool) -> dict | None:
        """Projection accuracy for the base and the seed-0 final model of each projection algorithm
        (those whose run is finished); cached per model in tasks/<task>/projection.json."""
        path = self.dir / "projection.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not enabled:
            return data or None
        from vgpo.models import load_model

        cfg = self.first_run.config
        world = get_world(self.task.world)
        train_metas = world.load_prompts(Path(cfg.train_prompts) if cfg.train_prompts else world.train_file)
        models: list[tuple[str, Callable]] = [
            ("base", lambda: load_model(cfg.model, cfg.checkpoint, cfg.model_options, cfg.device))
        ]
        seed = self.task.seeds[0] if self.task.seeds else 0
        for algo in self.task.projection_models:
            run = next(
                (
                    r
                    for r in self.plan.runs_of(self.task.name)
                    if r.algorithm == algo and not r.variant and r.seed == seed
                ),
                None,
            )
            if run is not None and (run.dir / MARKER).is_file():
                models.append((f"{algo}/seed{seed}", lambda run=run: Q.load_trained(run.config, run.dir)))
        changed = False
        reward_fn = None
        for name, make in models:
            if name in data:
                continue
            self.log(f"[{self.task.name}] projection accuracy of {name}")
            reward_fn = reward_fn or build_reward(cfg.reward_spec(world.reward))
            model = make()
            traj, metas, groups = Q.projection_rollouts(
                model, cfg, train_metas, self.task.projection_prompts, self.task.projection_group
            )
            data[name] = Q.projection_accuracy(
                traj, model.decode, reward_fn, [m["prompt"] for m in metas], metas, groups
            )
            changed = True
        if changed:
            atomic_write_text(json.dumps(data, indent=2) + "\n", path)
        return data or None


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
class StaleRunError(VgpoError):
    """A run folder made with another config than the suite's (never overwritten silently)."""


def _stale(run: RunPlan, stored: dict) -> None:
    """Raise when a finished run was made with another config. A field the stored config lacks was added
    to TrainConfig after the run; it counts as its default, the behaviour the run had, or as its
    LEGACY_VALUES entry where the default changed since (the CFG gradient)."""
    want, have, defaults = comparable_config(run.config), comparable_config(stored), comparable_config(TrainConfig())
    defaults.update(LEGACY_VALUES)
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k, defaults.get(k)))
    if diff:
        raise StaleRunError(
            f"{run.id}: {run.dir} was made with another config ({', '.join(diff[:5])} differ); "
            "use a fresh --out or delete that run folder"
        )


def execute_run(run: RunPlan, log: Callable[[str], None]) -> str:
    """Train one run unless finished; returns 'skipped', 'resumed' or 'ran'."""
    marker = run.dir / MARKER
    if marker.is_file():
        _stale(run, json.loads(marker.read_text())["config"])
        return "skipped"
    resume = has_checkpoint(run.dir)
    if resume:
        if (run.dir / "config.json").is_file():
            _stale(run, json.loads((run.dir / "config.json").read_text()))
    elif run.dir.exists():
        shutil.rmtree(run.dir)  # a run killed before its first checkpoint: start clean
    log(f"{run.id}: {'resuming' if resume else 'training'} ({run.config.algorithm}, {run.config.epochs} epochs)")
    started = time.time()
    train(run.config, resume=resume)
    wall = time.time() - started
    atomic_write_text(
        json.dumps(
            {"id": run.id, "config": asdict(run.config), "wall_s": wall, "resumed": resume, "finished": now_iso()},
            indent=2,
        )
        + "\n",
        marker,
    )
    (run.dir / ERROR_FILE).unlink(missing_ok=True)
    return "resumed" if resume else "ran"


# --------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------
def estimate_run_seconds(run: RunPlan, n_eval_prompts: int, quality_per_prompt: int) -> float:
    """Rough wall-clock of one run (the dry run's estimate; see FWD_S)."""
    c = run.config
    cfg_mult = 1 if c.guidance_scale == 1.0 else 2
    eval_mult = 1 if c.eval_guidance == 1.0 else 2
    height, width = get_world(c.world).image_size
    fwd_s = FWD_S * height * width / (32 * 32)
    samples = c.prompts_per_epoch * c.group_size
    rollout = samples * c.num_steps * cfg_mult * fwd_s
    update = samples * c.trained_steps * cfg_mult * fwd_s * (1 + BWD_FACTOR) * c.inner_epochs
    images = samples * (len(scored_steps(c.num_steps, c.tcrm_every)) if c.dense_rewards else 1)
    n_evals = (
        1
        + (c.epochs // c.eval_every if c.eval_every else 0)
        + (1 if not c.eval_every or c.epochs % c.eval_every else 0)
    )
    evals = n_evals * n_eval_prompts * c.eval_images_per_prompt * c.eval_num_steps * eval_mult * fwd_s
    quality = n_eval_prompts * quality_per_prompt * c.eval_num_steps * eval_mult * fwd_s
    return c.epochs * (rollout + update + images * REWARD_S.get(c.world, REWARD_S["shapes"])) + evals + quality


def describe(plan: Plan, selected: Sequence[RunPlan], jobs: int = 1) -> list[str]:
    lines, total = [], 0.0
    for run in selected:
        task = plan.task(run.task)
        n = task.eval_prompts or len(get_world(task.world).load_prompts(get_world(task.world).test_file))
        est = estimate_run_seconds(run, n, task.quality_images_per_prompt if task.encoder else 0)
        state = "done" if (run.dir / MARKER).is_file() else ("checkpoint" if has_checkpoint(run.dir) else "todo")
        total += 0.0 if state == "done" else est
        lines.append(f"{run.id:<40} {state:<10} ~{est / 60:5.1f} min")
    # The per-run figures assume one thread beside another busy job: --jobs 2 on 2 cores.
    wall = f"~{total / 60:.0f} min of runs; ~{total / 60 / max(jobs, 1):.0f} min of wall time with --jobs {jobs}"
    lines.append(
        f"{len(selected)} runs; remaining {wall} by the rough cost model "
        f"(suite target {plan.suite.target_minutes:g} min on 2 cores)"
    )
    return lines


def run_suite(
    suite: Suite,
    out: str | Path,
    only: Sequence[str] = (),
    threads: int = 0,
    use_quality: bool = True,
    projection: bool = True,
    report_only: bool = False,
    command: str = "",
    jobs: int = 1,
    log: Callable[[str], None] = print,
    optional: bool = False,
) -> Outcome:
    """Run the selected unfinished runs (``jobs`` at a time, each in its own process), then the task-level
    checks, then write results.json, BENCHMARKS.md and the plots."""
    started_at, started = now_iso(), time.time()
    git = git_info()  # the commit of the code this invocation runs, before anyone commits on during a long suite
    out = Path(out)
    if jobs < 1:
        raise VgpoError(f"--jobs: must be >= 1, got {jobs}")
    if jobs > 1 and not threads:
        threads = max(1, (os.cpu_count() or 1) // jobs)  # the jobs share the cores instead of oversubscribing them
    plan = expand(suite, out, threads, optional)
    selected = select(plan.runs, only)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(suite.to_dict(), indent=2, default=str) + "\n", out / "suite.json")
    if threads:
        torch.set_num_threads(threads)
    outcome = Outcome(out / RESULTS, out / REPORT, [])
    contexts = {t.name: TaskContext(t, plan, use_quality, log) for t in suite.tasks}
    tasks_run = [t for t in suite.tasks if any(r.task == t.name for r in selected)]
    extras: dict[str, dict] = {}  # per task: the base's quality and the projection check
    if not report_only:
        for task in tasks_run:
            check_checkpoint(task, plan.runs_of(task.name)[0].config.model)
            write_subset(task, out)
            if contexts[task.name].use_quality:
                contexts[task.name].encoder()  # fail early on a missing encoder
        if jobs > 1 and len(selected) > 1:
            extras = _run_parallel(plan, selected, tasks_run, jobs, threads, use_quality, projection, outcome, log)
        else:
            for k, run in enumerate(selected, 1):
                log(f"[{k}/{len(selected)}] {run.id}")
                _run_and_measure(run, contexts[run.task], outcome, log)
    # Each task's checks once: measured (in a worker above, or here) for the tasks this invocation ran,
    # read from their caches for the others.
    for t in suite.tasks:
        if t.name not in extras:
            busy = t in tasks_run and not report_only
            extras[t.name] = _task_checks(contexts[t.name], busy, projection, outcome, log)
    results = build_results(plan, command, time.time() - started, started_at, extras, jobs, git)
    from .plots import write_plots

    plots = write_plots(results.to_dict(), out)
    outcome.plots = [p for files in plots.values() for p in files]
    results.wall_s = time.time() - started
    if report_only:
        results = keep_run_invocation(results, _cached(outcome.results))
    document = results.to_dict()
    atomic_write_text(json.dumps(document, indent=1, default=str) + "\n", outcome.results)
    write_markdown(document, outcome.report, plots)
    log(
        f"wrote {outcome.results}, {outcome.report} and {len(outcome.plots)} plots "
        f"(ran {len(outcome.ran)}, resumed {len(outcome.resumed)}, skipped {len(outcome.skipped)}, "
        f"failed {len(outcome.failed)})"
    )
    return outcome


def _run_and_measure(run: RunPlan, ctx: TaskContext, outcome: Outcome, log: Callable[[str], None]) -> None:
    """Train one run and measure its quality; a failure is recorded in the run folder and ``outcome``."""
    try:
        state = execute_run(run, log)
        getattr(outcome, state).append(run.id)
        ctx.run_quality(run)
    except (KeyboardInterrupt, StaleRunError):
        raise
    except Exception as err:  # noqa: BLE001 -- one failed run must not stop the suite
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / ERROR_FILE).write_text(traceback.format_exc() + f"\n{type(err).__name__}: {err}\n")
        outcome.failed[run.id] = f"{type(err).__name__}: {err}"
        log(f"{run.id}: FAILED ({type(err).__name__}: {err}); see {run.dir / ERROR_FILE}")


def _task_checks(ctx: TaskContext, busy: bool, projection: bool, outcome: Outcome, log: Callable[[str], None]) -> dict:
    """The base model's quality and the projection check of one task (computed when ``busy``, else read
    from their caches)."""
    try:
        return {
            "base_quality": ctx.base_quality() if busy else _cached(ctx.base_quality_path()),
            "projection": ctx.projection(projection and busy),
        }
    except Exception as err:  # noqa: BLE001
        outcome.failed[f"{ctx.task.name}/task-checks"] = f"{type(err).__name__}: {err}"
        log(f"{ctx.task.name}: task-level checks FAILED ({type(err).__name__}: {err})")
        return {"base_quality": _cached(ctx.base_quality_path()), "projection": None}


# --------------------------------------------------------------------------------------------------
# Parallel runs: a pool of worker processes, each with ``threads`` torch threads. A run's own output
# (progress bar, trainer messages) goes to logs/<run id>.log under the suite folder; the parent logs
# starts and ends. Runs are independent (own seed, own folder), so a run's numbers do not depend on
# which worker trained it or next to what (tested); its wall-clock does, and every run of a suite
# shares the same condition.
# --------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(plan: Plan, use_quality: bool, threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    _WORKER["plan"] = plan
    _WORKER["contexts"] = {t.name: TaskContext(t, plan, use_quality, print) for t in plan.suite.tasks}


def _log_path(out: Path, name: str) -> Path:
    path = out / "logs" / f"{name.replace('/', '__')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _worker_run(run_id: str) -> Outcome:
    plan: Plan = _WORKER["plan"]
    run = next(r for r in plan.runs if r.id == run_id)
    outcome = Outcome(Path(), Path(), [])
    with open(_log_path(plan.out, run_id), "a", buffering=1) as f, redirect_stdout(f), redirect_stderr(f):
        _run_and_measure(run, _WORKER["contexts"][run.task], outcome, print)
    return outcome


def _worker_task_checks(task: str, projection: bool) -> tuple[dict, Outcome]:
    outcome = Outcome(Path(), Path(), [])
    with (
        open(_log_path(_WORKER["plan"].out, f"{task}__task-checks"), "a", buffering=1) as f,
        redirect_stdout(f),
        redirect_stderr(f),
    ):
        extras = _task_checks(_WORKER["contexts"][task], True, projection, outcome, print)
    return extras, outcome


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _merge(into: Outcome, part: Outcome) -> None:
    for name in ("ran", "resumed", "skipped"):
        getattr(into, name).extend(getattr(part, name))
    into.failed.update(part.failed)


def _run_parallel(
    plan: Plan,
    selected: Sequence[RunPlan],
    tasks_run: Sequence[TaskSpec],
    jobs: int,
    threads: int,
    use_quality: bool,
    projection: bool,
    outcome: Outcome,
    log: Callable[[str], None],
) -> dict:
    """Longest runs first (by the dry run's cost model), so the pool ends with short runs; then the
    checks of every task in ``tasks_run`` side by side. Returns those tasks' extras for the report."""

    def cost(run: RunPlan) -> float:
        task = plan.task(run.task)
        return estimate_run_seconds(run, task.eval_prompts or 1, task.quality_images_per_prompt)

    order = sorted(selected, key=cost, reverse=True)
    done = 0
    # `kill` (SIGTERM) of a background suite must stop its workers too, like Ctrl-C: a worker left running
    # would keep writing into a run folder that the next invocation resumes.
    restore = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, _interrupt)
    log(f"{len(order)} runs, {jobs} at a time with {threads} thread(s) each; per-run output in {plan.out / 'logs'}")
    others = set(multiprocessing.active_children())  # children that are not the pool's workers
    with ProcessPoolExecutor(
        jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(plan, use_quality, threads),
    ) as pool:
        try:
            pending: dict[Future, str] = {pool.submit(_worker_run, run.id): run.id for run in order}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    run_id = pending.pop(future)
                    _merge(outcome, future.result())  # a StaleRunError re-raises here and stops the suite
                    done += 1
                    state = "FAILED" if run_id in outcome.failed else "done"
                    log(f"[{done}/{len(order)}] {run_id}: {state} ({time.strftime('%H:%M:%S')})")
            checks = {t.name: pool.submit(_worker_task_checks, t.name, projection) for t in tasks_run}
            extras = {}
            for name, future in checks.items():
                extras[name], part = future.result()
                _merge(outcome, part)
        except BaseException:
            # Ctrl-C, a stale run or a broken worker: stop the runs in flight too (a worker that is
            # only told to cancel finishes its current run, orphaned). Their checkpoints stay for a
            # resume. The executor has no public call for this; its workers are this process's children.
            for process in set(multiprocessing.active_children()) - others:
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
    return extras


def _cached(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
