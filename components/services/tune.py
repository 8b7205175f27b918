"""Ray Tune at the edge: the search driver. Search compression recipes, pick the winner on validation.

The space is :class:`components.services.search_space.SearchSpace` (checked before Ray starts); the front, the
winner and the result files are :mod:`components.services.search_results`; MLflow is :mod:`components.services.search_runs`;
a search submitted to a RayCluster as a Ray job is :mod:`components.services.ray_job`; starting or reaching Ray and
Tune's storage are :mod:`components.services.ray_connect`.

* :func:`run_search`: local Ray (or ``address`` / ``RAY_ADDRESS``), the dataset and the dense model put in
  the object store once (``tune.with_parameters``), one trial = one :func:`idap.prune.compress` run that reports
  after every pruning step; the base recipe is always the first trial (``points_to_evaluate``).
* Objectives. ``constrained``: maximize the MACs (or params) reduction subject to the accuracy budget on
  validation; a trial over budget scores 0 (infeasible) and never wins; ASHA stops trials that fall behind
  at a rung of pruning steps (never the default recipe's trial: :class:`SparingASHA`). ``multi``: validation accuracy vs reduction with Optuna's multi-objective
  sampler and *no* scheduler (a stopped trial would enter the front with partial values); the Pareto
  front is computed here from the completed trials. ``reduction: speedup`` searches on MACs and picks,
  among the feasible front, the model measured fastest after the search.
* After the search, one model at a time in the driver: test accuracy of the winner(s) and the default,
  batch-1 latency of the Pareto candidates. Selection never looks at the test split.
* MLflow: the search is a run, every trial a nested run of it, every write from the driver.
* An interrupted search (Ctrl-C) resumes from its experiment directory without re-running finished trials.

Example:
    >>> space = SearchSpace.from_yaml("recipes/search/default.yaml")            # doctest: +SKIP
    >>> result = run_search(data=data, dense=dense, base=Recipe(), space=space,
    ...                     experiment_dir=".idap/tune/demo")                   # doctest: +SKIP
    >>> result.winner_recipe.filter.p0                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from components.services.ray_connect import SearchError, start_ray, tune_storage
from components.services.search_results import (
    SearchResult,
    held_to_budget,
    pareto_front,
    select_winner,
    write_results,
)
from components.services.search_runs import TrialRuns, log_search
from components.services.search_space import SearchSpace, SearchSpaceError
from components.services.tune_trial import SparingASHA, TrialLines, run_trial
from idap.prune.config import Recipe

__all__ = ["SearchInterrupted", "check_new_experiment", "read_state", "run_search"]

log = logging.getLogger("idap.tune")

STATE_FILE = "idap-search.json"


class SearchInterrupted(SearchError):
    """The search stopped before every trial ended (Ctrl-C); resume it from its experiment directory."""


# ---- Ray ---------------------------------------------------------------------------------------
# ---- the search --------------------------------------------------------------------------------
def read_state(experiment_dir: str | os.PathLike) -> dict:
    """What a search recorded about itself (space, base recipe, search run, sources) for ``--resume``."""
    path = Path(experiment_dir) / STATE_FILE
    if not path.is_file():
        raise SearchError(f"{experiment_dir} holds no search to resume (no {STATE_FILE}); start one without --resume")
    return json.loads(path.read_text())


def check_new_experiment(experiment_dir: str | os.PathLike) -> None:
    """A new search may not start where one already is (it would mix two searches' trials)."""
    if (Path(experiment_dir) / STATE_FILE).is_file():
        raise SearchError(f"{Path(experiment_dir).absolute()} already holds a search: resume it (--resume) or "
                          "choose another --experiment-dir")


def run_search(
    *,
    data,
    dense,
    base: Recipe,
    space: SearchSpace,
    experiment_dir: str | os.PathLike,
    resume: bool | str = False,
    search_run_id: str | None = None,
    run_name: str = "tune",
    sources: dict | None = None,
    address: str | None = None,
    storage: str | None = None,
    num_cpus: int | None = None,
    cpus_per_trial: int = 1,
    max_concurrent: int | None = None,
    seed: int = 0,
    measure_latency: bool = True,
    grace_period: int = 1,
    reduction_factor: float = 2.0,
    extra_points: Sequence[dict] = (),
    compress_fn: Callable | None = None,
    callbacks: Sequence = (),
    verbose: int = 1,
) -> SearchResult:
    """Search ``space`` around ``base`` on ``data`` for the trained ``dense`` model (see the module docstring).

    Args:
        experiment_dir: Tune's experiment directory (trial results, checkpoints) and this search's state.
        resume: True continues an interrupted search there; "auto" does so when one exists.
        search_run_id: an MLflow run to log into (the pipeline's run); None creates a top-level search run.
        sources: where the data and the dense model came from, kept for ``--resume``.
        address: a Ray cluster (None: ``RAY_ADDRESS`` or a private local Ray with ``num_cpus``); probed first,
            so a dead one fails in seconds.
        storage: where Tune keeps trial results and checkpoints (None: beside ``experiment_dir``; ``s3://...``
            when the trials run on other machines than the driver, see :func:`tune_storage`).
        cpus_per_trial: CPUs Ray reserves per trial; each trial sets torch's thread count to it.
        extra_points: configurations to evaluate right after the default one (known recipes).
        compress_fn: the trial's compression (default :func:`idap.prune.compress.compress`, same signature).
        callbacks: extra Tune callbacks (driver side).
        verbose: 0 silent, 1 one line per trial as it ends (stderr), 2 also Ray Tune's own output.

    Raises:
        SearchSpaceError: a bad space, before Ray starts. SearchInterrupted: stopped before every trial ended.
    """
    from ray import tune

    from components.services import mlflow_backend, tracking

    started = time.perf_counter()
    space.validate(base)
    for point in extra_points:
        for path in point:
            if path not in space.paths:
                raise SearchSpaceError(f"extra point sets {path!r}, which the space does not search; valid: {space.paths}")
        space.recipe(base, {**space.default_point(base), **point})
    budget = space.budget(base)
    exp_dir = Path(experiment_dir).absolute()
    state_path = exp_dir / STATE_FILE
    if resume == "auto":
        resume = state_path.is_file()
    if resume:
        state = read_state(exp_dir)
        storage = state.get("storage")
    store = tune_storage(storage, exp_dir)
    if resume:
        if not tune.Tuner.can_restore(f"{store[0]}/{exp_dir.name}", storage_filesystem=store[1]):
            raise SearchError(f"{storage or exp_dir} holds no Tune experiment state of {exp_dir.name} to resume from")
        search_run_id = state["search_run_id"]
    else:
        check_new_experiment(exp_dir)
    if space.reduction == "speedup" and not measure_latency:
        raise SearchSpaceError("reduction speedup picks the winner by measured latency: do not switch latency off")

    settings = mlflow_backend.configure()
    client = mlflow_backend.get_client(settings)
    if resume:
        owned_run = bool(state.get("owned_run"))
        client.update_run(search_run_id, status="RUNNING")
    else:
        owned_run = search_run_id is None
        if owned_run:
            search_run_id = tracking.start_pipeline_run(run_name, tags={"idap.kind": "search"})
    tracker = tracking.StepTracker(client, search_run_id)
    tracker.log_params({"search.objective": space.objective, "search.reduction": space.reduction,
                        "search.budget_pp": budget, "search.num_samples": space.num_samples,
                        "search.space": json.dumps(space.to_dict()["space"]), "search.experiment_dir": str(exp_dir),
                        "search.cpus_per_trial": cpus_per_trial, "search.seed": seed})
    tracker.set_tags({"idap.search": "true", "idap.recipe_digest": base.digest()})
    if not resume:
        exp_dir.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps({"search_run_id": search_run_id, "owned_run": owned_run,
                                          "space": space.to_dict(), "space_source": space.source,
                                          "base_recipe": base.to_dict(), "sources": sources or {}, "seed": seed,
                                          "cpus_per_trial": cpus_per_trial, "max_concurrent": max_concurrent,
                                          "measure_latency": measure_latency, "extra_points": list(extra_points),
                                          "storage": storage},
                                         indent=2, default=str))
    try:
        result = _search(data, dense, base, space, exp_dir, resume, search_run_id, owned_run, tracker, address,
                         num_cpus, cpus_per_trial, max_concurrent, seed, measure_latency, grace_period,
                         reduction_factor, extra_points, compress_fn, callbacks, budget, started, verbose, store)
    except SearchInterrupted:
        if owned_run:
            tracking.finish_pipeline_run(search_run_id, "KILLED")
        raise
    except BaseException as error:
        tracker.set_tags({"idap.error": f"{type(error).__name__}: {error}"[:5000]})
        if owned_run:
            tracking.finish_pipeline_run(search_run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if owned_run:
        tracking.finish_pipeline_run(search_run_id)
    return result


def _search(data, dense, base, space, exp_dir, resume, search_run_id, owned_run, tracker, address, num_cpus,
            cpus_per_trial, max_concurrent, seed, measure_latency, grace_period, reduction_factor, extra_points,
            compress_fn, callbacks, budget, started, verbose=1, store=(None, None)) -> SearchResult:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from idap.measure.metrics import accuracy, count_macs, count_params

    dense = dense.cpu().eval()
    shape = (data.in_channels, data.image_size, data.image_size)
    dense_val_acc = accuracy(dense, data.val_x, data.val_y, batch_size=base.eval_batch_size)
    dense_info = {"val_acc": dense_val_acc, "macs": count_macs(dense, shape), "params": count_params(dense)}
    ray_t0 = time.perf_counter()
    if verbose >= 2:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    owned_ray = start_ray(address, num_cpus=num_cpus, log_to_driver=verbose >= 2)
    ray_seconds = time.perf_counter() - ray_t0
    runs = TrialRuns(search_run_id, base.to_dict(), space.paths, space.default_point(base))
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, data=data, dense=dense, base=base.to_dict(), paths=space.paths,
                                 budget_pp=budget, reduction=space.reduction, dense_val_acc=dense_val_acc,
                                 threads=cpus_per_trial, compress_fn=compress_fn),
            {"cpu": cpus_per_trial})
        if resume:
            tuner = tune.Tuner.restore(f"{store[0]}/{exp_dir.name}", trainable, storage_filesystem=store[1],
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            tuner = tune.Tuner(trainable, param_space=space.param_space(),
                               tune_config=_tune_config(space, base, seed, max_concurrent, grace_period,
                                                        reduction_factor, extra_points, OptunaSearch),
                               run_config=tune.RunConfig(
                                   name=exp_dir.name, storage_path=store[0], storage_filesystem=store[1],
                                   callbacks=[runs, *([TrialLines(space.num_samples, space.metric)] if verbose else []),
                                              *callbacks],
                                   failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                   checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                   verbose=1 if verbose >= 2 else 0))
        fit_started = time.perf_counter()
        grid = tuner.fit()
        fit_seconds = time.perf_counter() - fit_started
        with contextlib.suppress(Exception):  # a restored search logs through the callback Tune restored
            runs = next(c for c in tuner._local_tuner.get_run_config().callbacks if isinstance(c, TrialRuns))
        trials = _trial_summaries(grid, space, base)
        pending = [t for t in trials if t["status"] == "pending"]
        if pending or len(trials) < space.num_samples:
            done = sum(t["status"] in ("complete", "failed") for t in trials)
            raise SearchInterrupted(f"the search stopped before every trial ended ({done} of {space.num_samples} "
                                    f"complete or failed); resume it with `idap tune --resume --experiment-dir {exp_dir}`")
    finally:
        if owned_ray:
            import ray

            ray.shutdown()
    search_seconds = time.perf_counter() - started

    post_started = time.perf_counter()
    front = pareto_front([t for t in trials if t["status"] == "complete"], ("val_acc", space.metric))
    for t in trials:
        t["on_front"] = t in front
    default = next((t for t in trials if t["is_default"]), None)
    candidates = _unique([*front, *([default] if default and default["status"] == "complete" else [])])
    _measure(candidates, data, dense, measure_latency, store[1])
    winner = select_winner(space, front, trials)
    if winner is not None and winner not in candidates:
        _measure([winner], data, dense, measure_latency, store[1])
    winner_recipe = held_to_budget(space.recipe(base, winner["config"]), budget) if winner else base
    post_seconds = time.perf_counter() - post_started

    compute = sum(t.get("compress_seconds") or 0.0 for t in trials)
    wall = time.perf_counter() - started
    summary = {
        "objective": space.objective, "reduction": space.reduction, "budget_pp": budget,
        "num_samples": space.num_samples, "cpus_per_trial": cpus_per_trial, "resumed": bool(resume),
        "trials": {s: sum(t["status"] == s for t in trials) for s in ("complete", "stopped", "failed")},
        "winner": winner and winner["trial_id"], "default": default and default["trial_id"],
        "seconds": {"wall": round(wall, 1), "search": round(search_seconds, 1), "fit": round(fit_seconds, 1),
                    "ray_start": round(ray_seconds, 1), "trial_compress": round(compute, 1),
                    "mlflow_callback": round(runs.seconds, 1), "post_search_evaluation": round(post_seconds, 1)},
        "dense": dense_info,
    }
    result = SearchResult(search_run_id, exp_dir, space, budget, dense_info, trials, front, winner, winner_recipe,
                          default, summary, base)
    result.files = write_results(result, exp_dir / "results")
    log_search(tracker, result)
    return result


def _tune_config(space, base, seed, max_concurrent, grace_period, reduction_factor, extra_points, optuna_search):
    import optuna
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [space.default_point(base), *[{**space.default_point(base), **p} for p in extra_points]]
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, space.num_samples // 2)))
    if space.objective == "multi":
        # no metric in TuneConfig (it would turn the search single-objective) and no scheduler (a stopped trial
        # would be told to Optuna as complete with partial values)
        search = optuna_search(metric=["val_acc", space.metric], mode=["max", "max"], points_to_evaluate=points,
                               sampler=sampler)
        return tune.TuneConfig(search_alg=search, num_samples=space.num_samples, reuse_actors=True,
                               max_concurrent_trials=max_concurrent or None)
    search = optuna_search(metric="score", mode="max", points_to_evaluate=points, sampler=sampler)
    # One time unit = one pruning step; max_t only bounds the rungs (a trial never reports this often).
    scheduler = SparingASHA(spared=space.default_point(base), time_attr="training_iteration", max_t=4096,
                            grace_period=grace_period, reduction_factor=reduction_factor)
    return tune.TuneConfig(metric="score", mode="max", search_alg=search, scheduler=scheduler,
                           num_samples=space.num_samples, reuse_actors=True,
                           max_concurrent_trials=max_concurrent or None)


def _trial_summaries(grid, space: SearchSpace, base: Recipe) -> list[dict]:
    default = space.default_point(base)
    # Tune's own status tells a trial ASHA stopped (TERMINATED) from one an interrupt left open; the grid's
    # results are built from these trials in this order
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    out = []
    for i, r in enumerate(grid):
        m = r.metrics or {}
        config = {p: (r.config or {}).get(p) for p in space.paths}
        trial = trials[i] if len(trials) == len(grid) else None
        trial_id = trial.trial_id if trial is not None else (m.get("trial_id") or f"trial_{i:05d}")
        tune_status = trial.status if trial is not None else "TERMINATED"
        if r.error is not None:
            status = "failed"
        elif m.get("final"):
            status = "complete"
        elif m.get("training_iteration") and tune_status == "TERMINATED":
            status = "stopped"  # by ASHA, before its last step
        else:
            status = "pending"
        out.append({
            "trial_id": trial_id, "index": i, "status": status,
            "is_default": config == default, "config": config,
            **{k: m.get(k) for k in ("val_acc", "drop_pp", "macs", "params", "macs_reduction", "params_reduction",
                                     "score", "compress_seconds", "trial_started_at", "node_id")},
            "feasible": bool(m.get("feasible")) if status == "complete" else False,
            "reports": int(m.get("training_iteration") or 0),
            "checkpoint": r.checkpoint.path if (r.checkpoint is not None and status == "complete") else None,
            "error": (str(r.error).strip().splitlines() or ["error"])[-1] if r.error is not None else None,
        })
    return out


def _unique(items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        if all(item is not o for o in out):
            out.append(item)
    return out


def _measure(trials: list[dict], data, dense, latency: bool, filesystem=None) -> None:
    """Test accuracy (once) and batch-1 latency of each candidate, one model at a time after the search."""
    from idap.measure.metrics import accuracy
    from idap.measure.speed import measure_speed

    shape = (data.in_channels, data.image_size, data.image_size)
    dense_speed = None
    if latency:
        dense_speed = measure_speed({"dense": dense}, shape)["dense"]
    for t in trials:
        if t.get("test_acc") is not None or not t.get("checkpoint"):
            continue
        model = _checkpoint_model(t["checkpoint"], filesystem)
        t["test_acc"] = accuracy(model, data.test_x, data.test_y)
        if latency:
            speed = measure_speed({"m": model}, shape)["m"]
            t["latency_ms_b1"] = speed["latency_ms_b1"]
            t["speedup_b1"] = dense_speed["latency_ms_b1"] / speed["latency_ms_b1"]


def _checkpoint_model(path: str, filesystem=None):
    """The model a trial saved with its last report (on local disk, or copied from the Tune storage)."""
    from idap.bundle import load_bundle

    if filesystem is None:
        return load_bundle(Path(path) / "model")
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="idap-trial-") as tmp:
        tune.Checkpoint(path, filesystem=filesystem).to_directory(tmp)
        return load_bundle(Path(tmp) / "model")
