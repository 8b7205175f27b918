"""Ray Tune at the edge: search compression recipes, keep MLflow in step, pick the winner on validation.

* :class:`SearchSpace`: a YAML file keyed by dotted recipe paths (``filter.p0: {loguniform: [0.02, 0.2]}``),
  checked against the recipe schema before Ray starts. Distributions: ``uniform``, ``loguniform``,
  ``quniform`` [lo, hi, q], ``randint`` [lo, hi] (both ends included) and ``choice`` [values].
* :func:`run_search`: local Ray (or ``address`` / ``RAY_ADDRESS``), the dataset and the dense model put in
  the object store once (``tune.with_parameters``), one trial = one :func:`idap.compress` run that reports
  after every pruning step; the base recipe is always the first trial (``points_to_evaluate``).
* Objectives. ``constrained``: maximize the MACs (or params) reduction subject to the accuracy budget on
  validation; a trial over budget scores 0 (infeasible) and never wins; ASHA stops trials that fall behind
  at a rung of pruning steps (never the default recipe's trial: :class:`SparingASHA`). ``multi``: validation accuracy vs reduction with Optuna's multi-objective
  sampler and *no* scheduler (a stopped trial would enter the front with partial values); the Pareto
  front is computed here from the completed trials. ``reduction: speedup`` searches on MACs and picks,
  among the feasible front, the model measured fastest after the search.
* After the search, one model at a time in the driver: test accuracy of the winner(s) and the default,
  batch-1 latency of the Pareto candidates. Selection never looks at the test split.
* MLflow: the search is a run, every trial a nested run (``mlflow.parentRunId``) with its params, per-step
  and final metrics, FAILED or KILLED when it did not finish. Every write comes from the driver
  (:class:`TrialRuns`, a Tune callback), so a sqlite store keeps one writer.
* An interrupted search (Ctrl-C) resumes from its experiment directory without re-running finished trials.

Example:
    >>> space = SearchSpace.from_yaml("recipes/search/default.yaml")            # doctest: +SKIP
    >>> result = run_search(data=data, dense=dense, base=Recipe(), space=space,
    ...                     experiment_dir=".idap/tune/demo")                   # doctest: +SKIP
    >>> result.winner_recipe.filter.p0                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from components._settings import telemetry_off
from idap.config import ConfigError, Recipe

__all__ = ["SearchError", "SearchInterrupted", "SearchResult", "SearchSpace", "SearchSpaceError", "TrialRuns",
           "pareto_front", "read_state", "run_search", "start_ray"]

log = logging.getLogger("idap.tune")

OBJECTIVES = ("constrained", "multi")
REDUCTIONS = ("macs", "params", "speedup")
DISTRIBUTIONS = {"uniform": "[lo, hi]", "loguniform": "[lo, hi]", "quniform": "[lo, hi, q]",
                 "randint": "[lo, hi]", "choice": "[value, ...]"}
# Fields a trial may not change: they decide the splits every trial is compared on, or where it runs.
UNSEARCHABLE = {
    "version": "it is the recipe format", "seed": "it changes the data splits the trials are compared on",
    "calibration_size": "it changes the data splits the trials are compared on",
    "validation_size": "it changes the data splits the trials are compared on",
    "device": "trials run where Ray places them", "eval_batch_size": "it does not change the result",
}
SPACE_KEYS = ("description", "objective", "reduction", "budget_pp", "num_samples", "space")
STATE_FILE = "idap-search.json"
INFEASIBLE = 0.0  # the score of a trial over budget: below every feasible reduction (>= 1)
STAGE_CODES = {"filter": 1, "layer": 2, "finetune": 3}
DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "recipes" / "search" / "default.yaml"


class SearchSpaceError(ConfigError):
    """A search space that cannot be searched; the message names the field and the problem."""


class SearchError(RuntimeError):
    """A search that cannot start or resume (experiment directory, Ray)."""


class SearchInterrupted(SearchError):
    """The search stopped before every trial ended (Ctrl-C); resume it from its experiment directory."""


# ---- the search space --------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched recipe field and its distribution."""

    path: str
    kind: str
    args: tuple

    def domain(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "randint":  # Tune's upper bound is exclusive, the YAML's inclusive
            return tune.randint(self.args[0], self.args[1] + 1)
        return getattr(tune, self.kind)(*self.args)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return any(value == v and type(value) is type(v) for v in self.args)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return self.args[0] <= value <= self.args[1] and (self.kind != "randint" or isinstance(value, int))

    def corners(self) -> tuple:
        return self.args if self.kind == "choice" else tuple(self.args[:2])

    def to_yaml(self) -> dict:
        return {self.kind: list(self.args)}


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _dimension(path: str, spec, source: str) -> Dimension:
    where = f"{source}: {path}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(f"{where} must be one distribution such as {{uniform: [lo, hi]}}, got {spec!r}; "
                               f"valid: {sorted(DISTRIBUTIONS)}")
    [(kind, args)] = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SearchSpaceError(f"{where}: unknown distribution {kind!r}; valid: {sorted(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise SearchSpaceError(f"{where}: {kind} takes a list {DISTRIBUTIONS[kind]}, got {args!r}")
    if kind == "choice":
        if len({json.dumps(a, sort_keys=True) for a in args}) != len(args):
            raise SearchSpaceError(f"{where}: choice lists a value twice: {args}")
        return Dimension(path, kind, tuple(args))
    if len(args) != (3 if kind == "quniform" else 2) or not all(_number(a) for a in args):
        raise SearchSpaceError(f"{where}: {kind} takes numbers {DISTRIBUTIONS[kind]}, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise SearchSpaceError(f"{where}: {kind} lower bound {lo!r} must be below the upper bound {hi!r}")
    if kind == "loguniform" and lo <= 0:
        raise SearchSpaceError(f"{where}: loguniform needs a lower bound > 0, got {lo!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SearchSpaceError(f"{where}: randint takes integers [lo, hi], got {args!r}")
    if kind == "quniform" and args[2] <= 0:
        raise SearchSpaceError(f"{where}: quniform step q must be > 0, got {args[2]!r}")
    return Dimension(path, kind, tuple(args))


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies (dotted recipe paths) and how it judges a trial.

    Args:
        objective: ``constrained`` (max reduction within the budget, ASHA) or ``multi`` (Pareto front).
        reduction: ``macs``, ``params`` or ``speedup`` (searched on MACs, picked by measured latency).
        budget_pp: the accuracy budget, pp of validation accuracy below the dense model (None = the base
            recipe's ``max_accuracy_drop``). A searched ``max_accuracy_drop`` only steers the stages.
    """

    dimensions: tuple[Dimension, ...]
    objective: str = "constrained"
    reduction: str = "macs"
    budget_pp: float | None = None
    num_samples: int = 8
    description: str = ""
    source: str = "search space"

    def __post_init__(self):
        where = self.source
        if not self.dimensions:
            raise SearchSpaceError(f"{where}: 'space' must map at least one recipe field to a distribution")
        if self.objective not in OBJECTIVES:
            raise SearchSpaceError(f"{where}: objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.reduction not in REDUCTIONS:
            raise SearchSpaceError(f"{where}: reduction must be one of {list(REDUCTIONS)}, got {self.reduction!r}")
        if self.budget_pp is not None and not (_number(self.budget_pp) and 0 <= self.budget_pp <= 100):
            raise SearchSpaceError(f"{where}: budget_pp must be in [0, 100] percentage points, got {self.budget_pp!r}")
        if not isinstance(self.num_samples, int) or isinstance(self.num_samples, bool) or self.num_samples < 1:
            raise SearchSpaceError(f"{where}: num_samples must be an integer >= 1, got {self.num_samples!r}")

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data, source: str = "search space") -> SearchSpace:
        if not isinstance(data, dict):
            raise SearchSpaceError(f"{source} must hold a mapping with a 'space' key, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SPACE_KEYS))
        if unknown:
            raise SearchSpaceError(f"{source}: unknown key(s) {unknown}; valid: {list(SPACE_KEYS)} "
                                   "(recipe fields go under 'space')")
        space = data.get("space")
        if not isinstance(space, dict):
            raise SearchSpaceError(f"{source}: 'space' must map dotted recipe fields to distributions, got {space!r}")
        dims = tuple(_dimension(str(path), spec, source) for path, spec in space.items())
        settings = {k: data[k] for k in ("objective", "reduction", "budget_pp", "num_samples") if data.get(k) is not None}
        return cls(dims, description=str(data.get("description") or ""), source=source, **settings)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SearchSpaceError(f"search space file {path} does not exist")
        return cls.from_text(path.read_text(), source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "search space") -> SearchSpace:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SearchSpaceError(f"{source} is not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, spec: str) -> SearchSpace:
        """A file path, or the YAML / JSON text itself ("" = recipes/search/default.yaml)."""
        if not spec or not spec.strip():
            return cls.from_yaml(DEFAULT_SPACE)
        if "\n" in spec or spec.lstrip().startswith("{"):
            return cls.from_text(spec)
        return cls.from_yaml(spec)

    def with_settings(self, *, objective: str | None = None, reduction: str | None = None,
                      budget_pp: float | None = None, num_samples: int | None = None) -> SearchSpace:
        """The space with command-line settings on top (None keeps the file's)."""
        changes = {k: v for k, v in (("objective", objective), ("reduction", reduction), ("budget_pp", budget_pp),
                                     ("num_samples", num_samples)) if v is not None}
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        return {"description": self.description, "objective": self.objective, "reduction": self.reduction,
                "budget_pp": self.budget_pp, "num_samples": self.num_samples,
                "space": {d.path: d.to_yaml() for d in self.dimensions}}

    # ---- against a recipe --------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        return [d.path for d in self.dimensions]

    def validate(self, base: Recipe) -> None:
        """Every field exists and may be searched, every bound / choice is a valid value of it, and the base
        recipe's value lies in the space (it is the first trial)."""
        flat = base.flat()
        searchable = sorted(k for k in flat if k not in UNSEARCHABLE)
        for d in self.dimensions:
            where = f"{self.source}: {d.path}"
            if d.path in UNSEARCHABLE:
                raise SearchSpaceError(f"{where} cannot be searched: {UNSEARCHABLE[d.path]}")
            if d.path not in flat:
                raise SearchSpaceError(f"{where}: unknown recipe field; valid: {searchable}")
            for value in d.corners():
                try:
                    base.with_overrides({d.path: value})
                except ConfigError as exc:
                    raise SearchSpaceError(f"{where}: {d.kind} value {value!r} is not valid: {exc}") from None
            if d.kind in ("uniform", "loguniform", "quniform"):  # real-valued draws must suit the field
                lo, hi = d.args[0], d.args[1]
                inner = float(lo + (hi - lo) * 0.37) if d.kind != "quniform" else float(lo + d.args[2] * 0.5)
                try:
                    base.with_overrides({d.path: inner})
                except ConfigError as exc:
                    raise SearchSpaceError(f"{where}: {d.kind} draws real numbers such as {inner:g}, which is not "
                                           f"valid: {exc} (an integer field takes randint [lo, hi])") from None
            if not d.contains(flat[d.path]):
                raise SearchSpaceError(f"{where}: the base recipe's value {flat[d.path]!r} lies outside "
                                       f"{d.kind} {list(d.args)}; widen the range (the base recipe is the first trial)")
        if self.reduction == "speedup" and self.objective == "multi":
            raise SearchSpaceError(f"{self.source}: the multi-objective front is accuracy vs macs or params; "
                                   "speedup is measured after the search (use objective: constrained)")

    def budget(self, base: Recipe) -> float:
        return base.max_accuracy_drop if self.budget_pp is None else float(self.budget_pp)

    def default_point(self, base: Recipe) -> dict:
        flat = base.flat()
        return {p: flat[p] for p in self.paths}

    def recipe(self, base: Recipe, config: dict) -> Recipe:
        return base.with_overrides({p: config[p] for p in self.paths})

    def param_space(self) -> dict:
        return {d.path: d.domain() for d in self.dimensions}

    @property
    def metric(self) -> str:
        return "params_reduction" if self.reduction == "params" else "macs_reduction"


# ---- one trial (runs in a Ray worker) ---------------------------------------------------------
@dataclass
class _Progress:
    """Where a trial's model stands after each step, as the metrics it reports."""

    dense_val_acc: float
    dense_macs: int
    dense_params: int
    budget_pp: float
    slack_pp: float
    reduction: str
    started: float
    macs: int = 0  # where the model stands: the dense model's figures until a step is kept
    params: int = 0
    val_acc: float = 0.0
    steps: int = 0

    def __post_init__(self):
        self.macs = self.macs or self.dense_macs
        self.params = self.params or self.dense_params
        self.val_acc = self.val_acc or self.dense_val_acc

    def step(self, rec) -> dict:
        if rec.accepted or rec.action == "stop":  # rollbacks / reverted blocks are not the model carried on
            self.macs, self.params, self.val_acc = rec.macs, rec.params, rec.val_acc
        self.steps += 1
        # mid-run the stages may spend the recipe's slack; the final model is held to the budget itself
        return self.metrics(rec.stage, allowed=self.budget_pp + self.slack_pp, final=False)

    def finish(self, rec, seconds: float) -> dict:
        self.macs, self.params, self.val_acc = rec.macs, rec.params, rec.val_acc
        return {**self.metrics("finetune", allowed=self.budget_pp, final=True), "compress_seconds": round(seconds, 3)}

    def metrics(self, stage: str, *, allowed: float, final: bool) -> dict:
        drop = self.dense_val_acc - self.val_acc
        feasible = drop <= allowed + 1e-9
        macs_red = self.dense_macs / max(1, self.macs)
        params_red = self.dense_params / max(1, self.params)
        reduction = params_red if self.reduction == "params" else macs_red
        return {"val_acc": self.val_acc, "drop_pp": drop, "macs": self.macs, "params": self.params,
                "macs_reduction": macs_red, "params_reduction": params_red, "feasible": float(feasible),
                "score": reduction if feasible else INFEASIBLE, "stage": STAGE_CODES.get(stage, 0),
                "pruning_steps": self.steps, "final": float(final), "trial_started_at": self.started}


def _trial(config: dict, *, data, dense, base: dict, paths: list[str], budget_pp: float, reduction: str,
           dense_val_acc: float, threads: int, compress_fn: Callable | None) -> None:
    """One compression run: a report after every pruning step, and a last one with the model as checkpoint."""
    import torch
    from ray import tune

    from idap.bundle import save_bundle
    from idap.compress import compress
    from idap.metrics import count_macs, count_params

    torch.set_num_threads(threads)
    started = time.time()
    recipe = Recipe.from_dict(base).with_overrides({p: config[p] for p in paths})
    shape = (data.in_channels, data.image_size, data.image_size)
    progress = _Progress(dense_val_acc, count_macs(dense, shape), count_params(dense), budget_pp, recipe.stage_slack,
                         reduction, started)

    def on_step(rec) -> None:
        if rec.stage not in ("dense", "finetune"):  # the dense record is the same for every trial
            tune.report(progress.step(rec))

    t0 = time.perf_counter()
    result = (compress_fn or compress)(dense, data, recipe, on_step=on_step, dense_val_acc=dense_val_acc)
    metrics = progress.finish(result.steps[-1], time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(result.model.cpu(), Path(tmp) / "model", input_shape=shape, recipe=recipe.to_dict(),
                    metadata={"search_trial": {k: v for k, v in metrics.items() if k != "trial_started_at"}})
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


# ---- MLflow, from the driver ------------------------------------------------------------------
class TrialRuns(Callback):
    """Every trial as a nested MLflow run of the search run: params, per-step metrics, final status.

    Runs in the driver (Tune callbacks do), so a sqlite store has one writer. Picklable: Tune saves it with
    the experiment, and a restored search finds the runs of earlier attempts by their ``idap.trial_id`` tag.
    """

    def __init__(self, search_run_id: str, base: dict, paths: Sequence[str], default_point: dict):
        self.search_run_id = search_run_id
        self.base = base
        self.paths = list(paths)
        self.default_point = default_point
        self.seconds = 0.0
        self._client = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, int] = {}

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_runs": {}, "_logged": {}, "seconds": 0.0}

    @property
    def client(self):
        if self._client is None:
            from components import _mlflow, _tracking

            self._client = _mlflow.get_client(_mlflow.configure())
        return self._client

    @contextlib.contextmanager
    def _timed(self):
        t0 = time.perf_counter()
        try:
            yield
        except Exception as error:  # tracking must not end the search; the run's status shows it
            log.warning("MLflow logging of a trial failed: %s", error)
        finally:
            self.seconds += time.perf_counter() - t0

    def _run_id(self, trial, trials=()) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        from components._mlflow import str_dict as _str_dict
        from components._tracking import StepTracker

        client = self.client
        parent = client.get_run(self.search_run_id)
        earlier = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and tags.`idap.trial_id` = '{trial.trial_id}'")
        for run in earlier:  # an attempt the interrupted driver left open
            if run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "idap.trial_status", "interrupted")
                client.set_terminated(run.info.run_id, "KILLED")
        config = {p: trial.config.get(p) for p in self.paths}
        is_default = config == self.default_point
        index = next((i for i, t in enumerate(trials) if t is trial), len(self._runs))
        tags = {"mlflow.parentRunId": self.search_run_id, "idap.kind": "trial", "idap.trial_id": trial.trial_id,
                "idap.default_recipe": str(is_default).lower(), "idap.attempt": str(len(earlier) + 1)}
        run = client.create_run(parent.info.experiment_id, run_name=f"trial-{index:03d}" + (" (default)" if is_default else ""),
                                tags=_str_dict(tags))
        tracker = StepTracker(client, run.info.run_id)
        recipe = Recipe.from_dict(self.base).with_overrides(config)
        tracker.log_recipe(recipe)
        tracker.log_params({f"search.{p}": v for p, v in config.items()})
        self._runs[trial.trial_id] = run.info.run_id
        return run.info.run_id

    def _log_result(self, trial, result: dict) -> None:
        from components._tracking import StepTracker

        step = int(result.get("training_iteration") or 0)
        if not result or self._logged.get(trial.trial_id, -1) >= step:
            return
        keys = ("val_acc", "drop_pp", "macs", "params", "macs_reduction", "params_reduction", "feasible", "score",
                "stage", "compress_seconds")
        StepTracker(self.client, self._run_id(trial)).log_metrics(
            {k: result[k] for k in keys if k in result}, step=step)
        self._logged[trial.trial_id] = step

    def on_trial_start(self, iteration, trials, trial, **info):
        with self._timed():
            self._run_id(trial, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with self._timed():
            self._log_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self._timed():
            result = trial.last_result or {}
            self._log_result(trial, result)
            run_id = self._run_id(trial)
            finished = bool(result.get("final"))
            self.client.set_tag(run_id, "idap.trial_status", "complete" if finished else "stopped_early")
            if finished:
                self.client.set_tag(run_id, "idap.feasible", str(bool(result.get("feasible"))).lower())
            self.client.set_terminated(run_id, "FINISHED" if finished else "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        with self._timed():
            from components._mlflow import clip as _clip

            run_id = self._run_id(trial)
            error = _trial_error(trial)
            self.client.set_tag(run_id, "idap.trial_status", "failed")
            self.client.set_tag(run_id, "idap.error", _clip(error, 5000))
            self.client.set_terminated(run_id, "FAILED")


class TrialLines(Callback):
    """One console line (stderr) per trial as it ends: what it reached and how it ended."""

    def __init__(self, num_samples: int, metric: str):
        self.num_samples, self.metric, self.ended = num_samples, metric, 0

    def _line(self, trial, how: str) -> None:
        import sys

        self.ended += 1
        r = trial.last_result or {}
        figures = (f"val {r['val_acc']:.2f}%  {r.get(self.metric, 0):.2f}x {self.metric.split('_')[0]}  "
                   f"after {r.get('training_iteration', 0)} reports" if "val_acc" in r else "no result")
        print(f"[trial {self.ended}/{self.num_samples}] {trial.trial_id} {how:<13} {figures}", file=sys.stderr,
              flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        self._line(trial, ("complete" + ("" if r.get("feasible") else " (over budget)")) if r.get("final")
                   else "stopped early")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")


def _trial_error(trial) -> str:
    with contextlib.suppress(Exception):
        error = trial.get_error()
        if error is not None:
            return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return "the trial raised (see its error.txt in the experiment directory)"


class SparingASHA(ASHAScheduler):
    """ASHA that never stops the default recipe's trial: it is the baseline a search must not end below, so
    it always runs to its final model (its results still set the rungs the other trials are cut at)."""

    def __init__(self, *, spared: dict, **kwargs):
        super().__init__(**kwargs)
        self.spared = spared

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and {p: trial.config.get(p) for p in self.spared} == self.spared:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


# ---- Ray ---------------------------------------------------------------------------------------
def start_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False) -> bool:
    """Start (or attach to) Ray; returns True when this call started it (the caller shuts it down).

    Local by default: ``address="local"``, no dashboard, bound to 127.0.0.1, a private temp dir, token
    auth off (``RAY_AUTH_MODE=disabled``: nothing listens beyond this machine), usage stats off.
    ``address`` (or ``RAY_ADDRESS``) attaches to an existing cluster instead, e.g. the RayCluster in infra/.
    """
    import ray

    telemetry_off()
    # Tune's console tables and its checkpoint-frequency warnings are noise next to idap's own summary
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address == "local":  # (an existing cluster refuses resource and dashboard arguments: it has its own)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # short: Ray's unix sockets live under it and a socket path may not exceed ~107 characters
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                      _temp_dir=tempfile.mkdtemp(prefix="idap-ray-"))
    try:
        ray.init(**kwargs)
    except Exception as error:
        raise SearchError(f"cannot start or reach Ray at {address!r}: {type(error).__name__}: {error}") from error
    return True


# ---- the search --------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """The trials, the Pareto front, the winner (None: nothing feasible, the base recipe stands) and files."""

    search_run_id: str
    experiment_dir: Path
    space: SearchSpace
    budget_pp: float
    dense: dict
    trials: list[dict]
    front: list[dict]
    winner: dict | None
    winner_recipe: Recipe
    default: dict | None
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)


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
        address: a Ray cluster (None: ``RAY_ADDRESS`` or a private local Ray with ``num_cpus``).
        cpus_per_trial: CPUs Ray reserves per trial; each trial sets torch's thread count to it.
        extra_points: configurations to evaluate right after the default one (known recipes).
        compress_fn: the trial's compression (default :func:`idap.compress.compress`, same signature).
        callbacks: extra Tune callbacks (driver side).
        verbose: 0 silent, 1 one line per trial as it ends (stderr), 2 also Ray Tune's own output.

    Raises:
        SearchSpaceError: a bad space, before Ray starts. SearchInterrupted: stopped before every trial ended.
    """
    from ray import tune

    from components import _mlflow, _tracking

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
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise SearchError(f"{exp_dir} holds no Tune experiment state to resume from")
        search_run_id = state["search_run_id"]
    else:
        check_new_experiment(exp_dir)
    if space.reduction == "speedup" and not measure_latency:
        raise SearchSpaceError("reduction speedup picks the winner by measured latency: do not switch latency off")

    settings = _mlflow.configure()
    client = _mlflow.get_client(settings)
    if resume:
        owned_run = bool(state.get("owned_run"))
        client.update_run(search_run_id, status="RUNNING")
    else:
        owned_run = search_run_id is None
        if owned_run:
            search_run_id = _tracking.start_pipeline_run(run_name, tags={"idap.kind": "search"})
    tracker = _tracking.StepTracker(client, search_run_id)
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
                                          "measure_latency": measure_latency, "extra_points": list(extra_points)},
                                         indent=2, default=str))
    try:
        result = _search(data, dense, base, space, exp_dir, resume, search_run_id, owned_run, tracker, address,
                         num_cpus, cpus_per_trial, max_concurrent, seed, measure_latency, grace_period,
                         reduction_factor, extra_points, compress_fn, callbacks, budget, started, verbose)
    except SearchInterrupted:
        if owned_run:
            _tracking.finish_pipeline_run(search_run_id, "KILLED")
        raise
    except BaseException as error:
        tracker.set_tags({"idap.error": f"{type(error).__name__}: {error}"[:5000]})
        if owned_run:
            _tracking.finish_pipeline_run(search_run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if owned_run:
        _tracking.finish_pipeline_run(search_run_id)
    return result


def _search(data, dense, base, space, exp_dir, resume, search_run_id, owned_run, tracker, address, num_cpus,
            cpus_per_trial, max_concurrent, seed, measure_latency, grace_period, reduction_factor, extra_points,
            compress_fn, callbacks, budget, started, verbose=1) -> SearchResult:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from idap.metrics import accuracy, count_macs, count_params

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
            tune.with_parameters(_trial, data=data, dense=dense, base=base.to_dict(), paths=space.paths,
                                 budget_pp=budget, reduction=space.reduction, dense_val_acc=dense_val_acc,
                                 threads=cpus_per_trial, compress_fn=compress_fn),
            {"cpu": cpus_per_trial})
        if resume:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            tuner = tune.Tuner(trainable, param_space=space.param_space(),
                               tune_config=_tune_config(space, base, seed, max_concurrent, grace_period,
                                                        reduction_factor, extra_points, OptunaSearch),
                               run_config=tune.RunConfig(
                                   name=exp_dir.name, storage_path=str(exp_dir.parent),
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
    _measure(candidates, data, dense, measure_latency)
    winner = _select(space, front, trials)
    if winner is not None and winner not in candidates:
        _measure([winner], data, dense, measure_latency)
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
                          default, summary)
    result.files = write_results(result, exp_dir / "results")
    _log_search(tracker, result)
    return result


def held_to_budget(recipe: Recipe, budget_pp: float) -> Recipe:
    """The recipe with ``max_accuracy_drop`` = the search's budget, for the steps after the search (the report
    and the promotion rule hold the model to it). A searched Δ above the budget moves into ``stage_slack``,
    so the stages decide exactly as in the trial; a Δ below it stays (stricter, and changing it would
    change the stages' decisions)."""
    stage = recipe.stage_budget
    if recipe.max_accuracy_drop == budget_pp or stage < budget_pp:
        return recipe
    return recipe.replace(max_accuracy_drop=float(budget_pp), stage_slack=float(stage - budget_pp))


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
                                     "score", "compress_seconds", "trial_started_at")},
            "feasible": bool(m.get("feasible")) if status == "complete" else False,
            "reports": int(m.get("training_iteration") or 0),
            "checkpoint": r.checkpoint.path if (r.checkpoint is not None and status == "complete") else None,
            "error": (str(r.error).strip().splitlines() or ["error"])[-1] if r.error is not None else None,
        })
    return out


def pareto_front(points: list[dict], keys: Sequence[str] = ("val_acc", "macs_reduction")) -> list[dict]:
    """The points no other point dominates (at least as good on every key, better on one); all maximized."""
    def dominates(a, b):
        return all(a[k] >= b[k] for k in keys) and any(a[k] > b[k] for k in keys)

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: [-p[k] for k in keys[1:]] + [-p[keys[0]]])


def _select(space: SearchSpace, front: list[dict], trials: list[dict]) -> dict | None:
    """The winner on validation: the largest reduction within the budget (speedup: the fastest feasible
    front member, measured after the search). None when no completed trial kept the budget."""
    feasible = [t for t in trials if t["status"] == "complete" and t["feasible"]]
    if not feasible:
        return None
    if space.reduction == "speedup":
        measured = [t for t in front if t["feasible"] and t.get("speedup_b1")] or feasible
        return max(measured, key=lambda t: (t.get("speedup_b1") or 0.0, t["val_acc"]))
    return max(feasible, key=lambda t: (t[space.metric], t["val_acc"], -t["index"]))


def _unique(items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        if all(item is not o for o in out):
            out.append(item)
    return out


def _measure(trials: list[dict], data, dense, latency: bool) -> None:
    """Test accuracy (once) and batch-1 latency of each candidate, one model at a time after the search."""
    from idap.bundle import load_bundle
    from idap.metrics import accuracy
    from idap.report import measure_speed

    shape = (data.in_channels, data.image_size, data.image_size)
    dense_speed = None
    if latency:
        dense_speed = measure_speed({"dense": dense}, shape)["dense"]
    for t in trials:
        if t.get("test_acc") is not None or not t.get("checkpoint"):
            continue
        model = load_bundle(Path(t["checkpoint"]) / "model")
        t["test_acc"] = accuracy(model, data.test_x, data.test_y)
        if latency:
            speed = measure_speed({"m": model}, shape)["m"]
            t["latency_ms_b1"] = speed["latency_ms_b1"]
            t["speedup_b1"] = dense_speed["latency_ms_b1"] / speed["latency_ms_b1"]


# ---- results -----------------------------------------------------------------------------------
CSV_FIELDS = ("trial_id", "status", "is_default", "on_front", "feasible", "val_acc", "drop_pp", "macs", "params",
              "macs_reduction", "params_reduction", "score", "test_acc", "latency_ms_b1", "speedup_b1", "reports",
              "compress_seconds", "error")


def write_results(result: SearchResult, directory: Path) -> dict[str, Path]:
    """pareto.json / pareto.csv (every trial, front flagged), pareto.png, best-recipe.yaml, front recipes,
    summary.json and search.md."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    doc = {"summary": result.summary, "dense": result.dense, "budget_pp": result.budget_pp,
           "front": [t["trial_id"] for t in result.front], "winner": result.winner and result.winner["trial_id"],
           "trials": result.trials}
    files["json"] = directory / "pareto.json"
    files["json"].write_text(json.dumps(doc, indent=2, default=str))
    files["csv"] = directory / "pareto.csv"
    with files["csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*CSV_FIELDS, *result.space.paths])
        for t in result.trials:
            writer.writerow([t.get(k) for k in CSV_FIELDS] + [t["config"].get(p) for p in result.space.paths])
    files["best_recipe"] = directory / "best-recipe.yaml"
    header = (f"# winner of the search: trial {result.winner['trial_id']}\n" if result.winner else
              "# no trial kept the accuracy budget: the base recipe stands\n")
    files["best_recipe"].write_text(header + result.winner_recipe.to_yaml())
    front_dir = directory / "front"
    shutil.rmtree(front_dir, ignore_errors=True)
    front_dir.mkdir()
    base = Recipe.from_dict(read_state(result.experiment_dir)["base_recipe"])
    for t in result.front:
        (front_dir / f"{t['trial_id']}.yaml").write_text(result.space.recipe(base, t["config"]).to_yaml())
    files["front"] = front_dir
    with contextlib.suppress(Exception):  # a plot is not worth failing a search for
        files["plot"] = pareto_plot(result, directory / "pareto.png")
    files["summary"] = directory / "summary.json"
    files["summary"].write_text(json.dumps(result.summary, indent=2))
    files["markdown"] = directory / "search.md"
    files["markdown"].write_text(search_markdown(result))
    return files


def pareto_plot(result: SearchResult, path: Path) -> Path:
    """Validation accuracy vs MACs of every completed trial, the front joined, the default recipe marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in result.trials if t["status"] == "complete"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for feasible, colour, label in ((True, "tab:blue", "within budget"), (False, "tab:gray", "over budget")):
        pts = [(t["macs"] / 1e6, t["val_acc"]) for t in done if t["feasible"] is feasible]
        if pts:
            ax.scatter(*zip(*pts, strict=True), c=colour, s=28, label=label, zorder=2)
    front = sorted(result.front, key=lambda t: t["macs"])
    if front:
        ax.plot([t["macs"] / 1e6 for t in front], [t["val_acc"] for t in front], "-", c="tab:orange",
                label="Pareto front", zorder=1)
    if result.default and result.default["status"] == "complete":
        ax.scatter([result.default["macs"] / 1e6], [result.default["val_acc"]], marker="*", s=220, c="tab:red",
                   label="default recipe", zorder=3)
    if result.winner:
        ax.scatter([result.winner["macs"] / 1e6], [result.winner["val_acc"]], marker="o", s=160, facecolors="none",
                   edgecolors="k", label="winner", zorder=4)
    ax.scatter([result.dense["macs"] / 1e6], [result.dense["val_acc"]], marker="D", c="k", s=30, label="dense")
    ax.axhline(result.dense["val_acc"] - result.budget_pp, ls="--", c="tab:red", lw=0.8, label=f"budget {result.budget_pp:g} pp")
    ax.set_xlabel("MMACs")
    ax.set_ylabel("validation accuracy (%)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Search ({result.space.objective}): {len(done)} completed trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, int | float) else str(v)


def search_markdown(result: SearchResult) -> str:
    s = result.summary
    lines = [f"# Compression search ({result.space.objective}, {result.space.reduction})", ""]
    if result.space.description:
        lines += [result.space.description.strip(), ""]
    lines += [f"Dense model: validation {result.dense['val_acc']:.2f} %, {result.dense['macs']:,} MACs, "
              f"{result.dense['params']:,} params. Budget: {result.budget_pp:g} pp of validation accuracy.",
              f"Trials: {s['trials']['complete']} complete, {s['trials']['stopped']} stopped early, "
              f"{s['trials']['failed']} failed. Wall time {s['seconds']['wall']:.0f} s, of which compression in the "
              f"trials {s['seconds']['trial_compress']:.0f} s (summed over trials), Ray start "
              f"{s['seconds']['ray_start']:.0f} s, MLflow logging {s['seconds']['mlflow_callback']:.1f} s.", ""]
    if result.winner:
        w = result.winner
        lines += [f"**Winner** (chosen on validation): trial `{w['trial_id']}` — {w['macs_reduction']:.2f}x fewer MACs, "
                  f"{w['params_reduction']:.2f}x fewer params, validation {w['val_acc']:.2f} % "
                  f"(drop {w['drop_pp']:.2f} pp), test {_fmt(w.get('test_acc'))} %.", ""]
    else:
        lines += ["**No trial kept the accuracy budget**: the base recipe stands.", ""]
    d = result.default
    if d and d["status"] == "complete":
        lines += [f"Default recipe (trial `{d['trial_id']}`): {d['macs_reduction']:.2f}x fewer MACs, validation "
                  f"{d['val_acc']:.2f} %, test {_fmt(d.get('test_acc'))} %.", ""]
    lines += ["| trial | status | front | val % | drop pp | MACs red. | params red. | test % | speed-up | "
              + " | ".join(f"`{p}`" for p in result.space.paths) + " |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|" + "---|" * len(result.space.paths)]
    for t in result.trials:
        mark = " (default)" if t["is_default"] else ""
        cells = [f"`{t['trial_id']}`{mark}", t["status"], "yes" if t.get("on_front") else "", _fmt(t["val_acc"]),
                 _fmt(t["drop_pp"]), _fmt(t["macs_reduction"]), _fmt(t["params_reduction"]), _fmt(t.get("test_acc")),
                 _fmt(t.get("speedup_b1")), *[_fmt(t["config"].get(p), ".4g") for p in result.space.paths]]
        lines.append("| " + " | ".join(cells) + " |")
    if "plot" in result.files or (result.experiment_dir / "results" / "pareto.png").is_file():
        lines += ["", "![Pareto front](pareto.png)"]
    return "\n".join(lines) + "\n"


def _log_search(tracker, result: SearchResult) -> None:
    """The search run: summary metrics, the winner as tags and every result file as an artifact."""
    metrics = {f"seconds_{k}": v for k, v in result.summary["seconds"].items()}
    metrics.update({f"trials_{k}": v for k, v in result.summary["trials"].items()})
    for name, t in (("best", result.winner), ("default", result.default)):
        if t and t["status"] == "complete":
            metrics.update({f"{name}_{k}": t[k] for k in ("val_acc", "drop_pp", "macs_reduction", "params_reduction")})
            metrics.update({f"{name}_{k}": t[k] for k in ("test_acc", "speedup_b1") if t.get(k) is not None})
    tracker.log_metrics(metrics)
    tracker.set_tags({"idap.search_winner": result.winner["trial_id"] if result.winner else "none (base recipe)",
                      "idap.search_front": ",".join(t["trial_id"] for t in result.front)})
    for path in result.files.values():
        tracker.log_artifacts(path, "search" if path.is_file() else f"search/{path.name}")
